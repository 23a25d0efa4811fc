"""dnmf's tests, one folder per layer of the package (engine, base, nmf, masked, recommend, storage, cli),
plus deploy/ (the deployment recipes), docs/ (the examples), plot/ and adversarial/ (hardening).

Markers (pyproject.toml): ``cluster`` and ``subprocess`` tests start processes; the fast lane is
``python -m pytest -m "not cluster and not subprocess"``.
"""
