"""The benchmarks, through real processes: `bench` times one pull against the naive way
(`pull.py`); `bench sync` keeps grants at scale through standalone workers (`sync.py`, with its
command line, enrolment, rounds, validator sample and report beside it; `procfs.py` reads the
processes' RSS and CPU time for both)."""
