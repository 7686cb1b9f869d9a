"""Releases: the blocking gate, publishing a version, the registry and the human report.

- gate: decide() / write_decision() / read_decision() / record_block() / audit_event()
- publish: publish(ReleaseRequest) -> ReleaseResult (stage release_adapter)
- registry: list_releases(), current_release(), get_release(), list_blocked()
"""
