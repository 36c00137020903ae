"""A standing fuzz campaign over every kvmcore parser (issue 12 §5).

Each target (fuzz.targets) feeds one parser bytes derived from the real
sample dumps, read at run time and never committed. The contract each input
is checked against (fuzz.contract): only kvmcore.errors.KvmcoreError
subclasses escape, no input runs past its time limit, none exhausts the
worker's address-space limit, and the seed dump files are never written.

``python -m fuzz --minutes N [--target NAME]`` runs a campaign (fuzz.campaign);
tests/test_fuzz.py runs a short, repeatable one and replays each finding's recipe.
"""
