"""spoolbalsam: a filesystem-native job spooler for supercomputers."""
__version__ = "0.1.0"
