"""Starting runs: preparing a run from the command's options (prepare.py), supervising its node
processes on one host (supervisor.py), finding other hosts (rendezvous.py, keystore.py), nodes
started by torchrun or SLURM (ranked.py), inference runs (infer.py) and run reports (report.py)."""
