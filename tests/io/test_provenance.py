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


def test_input_record_later_hashes_in_the_background(tmp_path):
    from slmctl.io.hashing import artifact_sha256

    f = tmp_path / "w.bin"
    f.write_bytes(b"weights" * 1000)
    rec, finish = provenance.input_record_later("w", f)
    placeholder = rec["sha256"]
    assert len(placeholder) == 64 and placeholder.startswith(provenance.PENDING)
    assert finish() == (placeholder, artifact_sha256(f))
    assert rec == provenance.input_record("w", f)  # the same record once finished
    rec2, _ = provenance.input_record_later("w", f)
    assert rec2["sha256"] != placeholder  # unique, so a writer finds exactly its own


def test_input_record_later_raises_the_hash_error_at_finish(tmp_path, monkeypatch):
    import pytest

    from slmctl.io import hashing

    def unreadable(path):
        raise PermissionError(f"{path}: permission denied")

    monkeypatch.setattr(hashing, "artifact_sha256", unreadable)
    rec, finish = provenance.input_record_later("w", tmp_path / "w.bin")
    with pytest.raises(PermissionError, match="permission denied"):
        finish()
    assert rec["sha256"].startswith(provenance.PENDING)  # never a digest it did not compute


def test_exports_carry_the_digest_not_the_placeholder(tiny_llama, tmp_path):
    """GGUF, HF and single-file safetensors exports hash the input while writing: the header and slmctl.json
    hold the input's real digest (the GGUF header patched in place)."""
    from slmctl.api import load_artifact
    from slmctl.io.hashing import artifact_sha256
    from slmctl.pipelines.export import export

    digest = artifact_sha256(tiny_llama)
    outs = {"gguf": tmp_path / "m.gguf", "hf": tmp_path / "hf", "safetensors": tmp_path / "m.safetensors"}
    for fmt, out in outs.items():
        export(str(tiny_llama), out, fmt=fmt, **({"outtype": "q8_0"} if fmt == "gguf" else {}))
        art, _ = load_artifact(str(out))
        assert art.provenance()["inputs"][0]["sha256"] == digest, fmt
        side = out / "slmctl.json" if out.is_dir() else out.with_name(out.name + ".slmctl.json")
        assert provenance.PENDING not in side.read_text() and digest in side.read_text(), fmt
        raw = out.read_bytes() if out.is_file() else b"".join(p.read_bytes()[:200000] for p in out.glob("*.safetensors"))
        assert provenance.PENDING.encode() not in raw, fmt
