"""Data-prep jobs: mesh sources to WebDataset shards (see `python -m data_prep --help`)."""
