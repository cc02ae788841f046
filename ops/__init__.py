"""Operations tooling, apart from the run's glue (app/): a loopback federation in one command
(local_federation.py), development certificates and SuperNode keys (certificates.py), and
helpers that stop whole process trees (processes.py)."""
