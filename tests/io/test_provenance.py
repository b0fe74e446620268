from slmctl import provenance


def test_chain_lists_a_shared_ancestor_once_oldest_first():
    base = provenance.build("export", {"format": "hf"}, [{"ref": "sample", "sha256": "a"}])
    pruned = provenance.build("prune", {"method": "depth"}, [{"ref": "base", "sha256": "b", "provenance": base}])
    distilled = provenance.build("distill", {}, [{"ref": "base", "sha256": "b", "provenance": base},
                                                 {"ref": "pruned", "sha256": "c", "provenance": pruned}])
    steps = provenance.chain(distilled)
    assert [s["verb"] for s in steps] == ["export", "prune", "distill"]


def test_verify_reports_match_mismatch_missing(tmp_path):
    from slmctl.io.hashing import artifact_sha256

    a = tmp_path / "a.bin"
    a.write_bytes(b"one")
    b = tmp_path / "b.bin"
    b.write_bytes(b"two")
    prov = provenance.build("export", {}, [
        {"ref": "a", "path": str(a), "sha256": artifact_sha256(a)},
        {"ref": "b", "path": str(b), "sha256": "0" * 64},
        {"ref": "gone", "path": str(tmp_path / "gone"), "sha256": "1" * 64}])
    v = provenance.verify(prov)
    assert [r["status"] for r in v["inputs"]] == ["match", "mismatch", "missing"]
    assert v["ok"] is False and v["checked"] == 2
