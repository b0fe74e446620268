"""prune: unstructured (magnitude, wanda, sparsegpt; N:M; adaptive), depth and width pruning.

artifact in -> calibration activations, layer by layer -> method -> HF folder out (with provenance),
then perplexity before/after on held-out text and an optional gate.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from .. import provenance
from ..eval.compare import check_gates, quality_report
from ..errors import UnsupportedError, UsageError
from ..recipe import PruneRecipe

Log = Callable[[str], None]
METHODS = ("magnitude", "wanda", "sparsegpt", "depth", "width")
PER_LAYER_NOTE = ("non-uniform widths (per-layer sizes in config.json as slmctl_per_layer): transformers' "
                  "from_pretrained cannot load this folder (no built-in Llama-style model takes per-layer head/FFN "
                  "sizes without remote code); slmctl eval and prune load it, and `slmctl export OUT --format gguf` "
                  "writes llama.cpp's `deci` architecture, which llama.cpp runs and `slmctl eval` scores")


def _nolog(msg: str) -> None:
    pass


def _check_method(method: str) -> None:
    if method not in METHODS:
        import difflib

        close = difflib.get_close_matches(method, METHODS, n=1)
        raise UsageError(f"unknown prune method {method!r}",
                         hint=(f"did you mean {close[0]!r}? " if close else "") + "valid: " + ", ".join(METHODS))


def load_model(art, path: Path, trust_remote_code: bool = False):
    """The artifact as an fp32 transformers model; per-layer widths (slmctl_per_layer) are rebuilt without remote code."""
    from ..hf import load_model as hf_model
    from ..surgery.width import PER_LAYER_KEY, load_per_layer_model

    if (art.config or {}).get(PER_LAYER_KEY):
        try:
            return load_per_layer_model(art, trust_remote_code)
        except ValueError as exc:
            raise UnsupportedError(f"{path}: transformers cannot build this model ({str(exc).splitlines()[0]})") from None
    return hf_model(path, trust_remote_code=trust_remote_code)


def calibration_ids(tok, *, data, field: str, samples: int, seqlen: int, seed: int, info: dict | None = None):
    """``samples`` windows of ``seqlen`` tokens, drawn (seeded) from the calibration region of ``data`` (one
    source or several, weighted; chat through ``tok``'s template; see slmctl.calib); ``info`` gets the
    calibration set's provenance."""
    import torch

    from ..calib import draw_windows

    if samples < 1 or seqlen < 2:
        raise UsageError("--samples must be at least 1 and --seqlen at least 2")
    wins, prov = draw_windows(tok, data, n=samples, ctx=seqlen, seed=seed, purpose="calib", field=field)
    if info is not None:
        info.update(prov)
    return torch.tensor(wins, dtype=torch.long)


def _torch_dtype(st_dtype: str):
    import torch

    from ..io.safetensors import DTYPES

    return getattr(torch, DTYPES[st_dtype][1]) if st_dtype in DTYPES else None


def prune(model: str, out: str | Path, recipe: PruneRecipe | None = None, *, force: bool = False,
          trust_remote_code: bool = False, log: Log = _nolog, progress=None, **options: Any) -> dict[str, Any]:
    """Prune ``model`` into an HF folder at ``out``; returns the report (per-layer sizes, parameters, quality).

    ``recipe`` says what to do (slmctl.recipe.PruneRecipe); keyword ``options`` are its fields, building
    one (``prune(m, out, method="wanda", sparsity=0.5)``) or replacing the given recipe's."""
    import torch

    from ..io.resolve import load_artifact
    from ..io.atomic import check_output
    from ..io.safetensors import parse_size
    from ..methods.prune.masks import parse_pattern

    asked = PruneRecipe.build(recipe, **options)
    method, sparsity, pattern, adaptive = asked.method, asked.sparsity, asked.pattern, asked.adaptive
    adaptive_metric, adaptive_lambda, layers, ratio = asked.adaptive_metric, asked.adaptive_lambda, asked.layers, asked.ratio
    depth_metric, heads_ratio, mlp_ratio, hidden_ratio = asked.depth_metric, asked.heads_ratio, asked.mlp_ratio, asked.hidden_ratio
    data, field, samples, seqlen, seed = asked.data, asked.field, asked.samples, asked.seqlen, asked.seed
    eval_data, eval_ctx, eval_windows = asked.eval_data, asked.eval_ctx, asked.eval_windows
    _check_method(method)
    out = Path(out)
    pat = parse_pattern(pattern)
    shard = parse_size(asked.max_shard_size)
    check_output(out, force)  # fail before the slow part

    t0 = time.perf_counter()
    art, path = load_artifact(model, log=log)
    if art.format != "hf":
        raise UnsupportedError(f"{path}: prune reads HF folders (this is {art.format})",
                               hint=f"convert it first: slmctl export {model} --format hf -o DIR")
    torch.manual_seed(seed)
    calib = {"data": data, "samples": samples, "seqlen": seqlen, "seed": seed}
    ctx = dict(art=art, path=path, ref=model, log=log, progress=progress, calib=calib, field=field,
               trust_remote_code=trust_remote_code, spill_dir=out.parent)
    if method == "depth":
        state_iter, config, recipe, layer_rows = _depth(ctx, layers=layers, ratio=ratio, metric=depth_metric)
    elif method == "width":
        state_iter, config, recipe, layer_rows = _width(ctx, heads_ratio=heads_ratio, mlp_ratio=mlp_ratio,
                                                        hidden_ratio=hidden_ratio, adaptive=adaptive,
                                                        lam=adaptive_lambda)
    else:
        state_iter, config, recipe, layer_rows = _unstructured(ctx, method=method, sparsity=sparsity, pat=pat,
                                                               pattern=pattern, adaptive=adaptive,
                                                               metric=adaptive_metric, lam=adaptive_lambda)
    calibrated = recipe.pop("_calibrated", True)
    recipe = {"method": method, **recipe, "calibration": calib if calibrated else None}
    rec, finish = provenance.input_record_later(model, path, art)  # hashed while the tensors are written
    inputs = [rec]
    info = ctx.get("calib_info")
    if calibrated and info:
        inputs.append({"ref": info["data"], "role": "calibration", "sha256": info["sha256"],
                       "windows": samples, "seq_len": seqlen, "calibration": info})
    prov = provenance.build("prune", recipe, inputs, typed=asked)
    from ..io.hf_folder import write_hf_folder

    params_before = sum(t.numel for t in art.tensors.values())
    counted = {"params": 0, "nonzero": 0}

    def counting(it):
        for name, t in it:
            counted["params"] += t.numel()
            if method in ("magnitude", "wanda", "sparsegpt"):
                counted["nonzero"] += int(torch.count_nonzero(t))
            yield name, t

    src_dir = path if path.is_dir() else path.parent
    write_hf_folder(out, src_dir=src_dir, config=config, tensors=counting(state_iter), prov=prov, force=force,
                    max_shard_size=shard, finish=finish)
    log(f"wrote {out}")
    rep: dict[str, Any] = {"output": str(out), "input": str(path), "method": method, "recipe": recipe,
                           "parameters_before": params_before, "parameters_after": counted["params"],
                           "layers": layer_rows}
    if method in ("magnitude", "wanda", "sparsegpt"):
        lin = sum(r["params"] for r in layer_rows)
        zeros = sum(r["zeros"] for r in layer_rows)
        rep["sparsity"] = zeros / lin if lin else 0.0
        rep["nonzero_parameters_after"] = counted["nonzero"]
    if config.get("slmctl_per_layer"):
        rep["formats_note"] = PER_LAYER_NOTE
    rep["prune_seconds"] = time.perf_counter() - t0
    if ctx.get("device"):  # the layer engine's device, its peak memory, and any activations spilled to disk
        rep["device"] = ctx["device"]()
    from ..calib import report_domains

    rep["quality"] = _quality(str(out), str(path), data=report_domains(data, eval_data), calib=data, field=field,
                              ctx=eval_ctx, windows=eval_windows, log=log) if eval_windows else None
    check_gates(rep, rep["quality"] or {}, max_ppl_increase=asked.max_ppl_increase)
    return rep


# ---------------------------------------------------------------- helpers shared by the methods
def _stream_state(art, state: dict[str, Any], rename: dict[str, str | None] | None = None):
    """(name, tensor) in the artifact's order and dtypes; tensors come from ``state`` or the artifact."""
    for name, lazy in art.tensors.items():
        new = rename.get(name, name) if rename is not None else name
        if new is None:
            continue
        t = state[new] if new in state else lazy.load()
        dt = _torch_dtype(lazy.dtype)
        if dt is not None and t.is_floating_point() and t.dtype != dt:
            t = t.to(dt)
        yield new, t


# ---------------------------------------------------------------- unstructured
def _unstructured(ctx, *, method, sparsity, pat, pattern, adaptive, metric, lam):
    from ..methods.prune import UNSTRUCTURED
    from ..methods.prune.adaptive import ADAPTIVE

    pruner = UNSTRUCTURED.get(method)
    target = 1.0 - pat[0] / pat[1] if pat else sparsity
    metric = metric or "owl"
    if adaptive:
        ADAPTIVE.get(metric)
    needs_calib = pruner.needs is not None or adaptive
    return _unstructured_layerwise(ctx, pruner=pruner, target=target, pat=pat, pattern=pattern, adaptive=adaptive,
                                   metric=metric, lam=lam, needs_calib=needs_calib)


def _mixer_note(config: dict, log):
    """``in_mixer(name)`` for the model's convolution / state-space mixers (left unpruned), logged once."""
    from ..arch import layer_kinds, mixer_filter

    kinds = sorted(set(layer_kinds(config) or ()) - {"attention", "mlp"})
    if kinds:
        log(f"leaving the {' and '.join(kinds)} mixers' linears dense: they feed a recurrence, which "
            "unstructured sparsity is not calibrated for; attention and MLP linears are pruned")
    return mixer_filter(config)


def _transposed(config: dict) -> tuple[str, ...]:
    """Tensor-name suffixes a family stores as (in, out) (GPT-2's Conv1D), from its architecture spec."""
    from ..arch import spec_for

    try:
        return spec_for(config).transpose
    except UnsupportedError:  # no GGUF spec: a family without Conv1D weights as far as slmctl knows
        return ()


def _engine(ctx):
    """The layer engine on the artifact (device from --device / $SLMCTL_DEVICE; activations over the memory
    budget spill beside the output); its device report lands in ``ctx["device"]``."""
    from ..layerwise import LayerwiseModel

    lm = LayerwiseModel(ctx["art"], trust_remote_code=ctx["trust_remote_code"], spill_dir=ctx.get("spill_dir"),
                        log=ctx["log"])
    ctx["device"] = lm.device_report
    return lm


def _calib_hidden(ctx, lm, chunk: int = 8) -> list:
    """The calibration windows embedded for layer 0, ``chunk`` windows per tensor (B, S, D).

    Batching changes no result (the layers' recorded kwargs broadcast over the batch; the hooks see
    the same tokens) and runs each layer about a quarter faster than window by window.
    """
    import torch

    from ..eval.backends import load_tokenizer

    c = ctx["calib"]
    windows = calibration_ids(load_tokenizer(lm.art, ctx["trust_remote_code"]), data=c["data"], field=ctx["field"],
                              samples=c["samples"], seqlen=c["seqlen"], seed=c["seed"],
                              info=ctx.setdefault("calib_info", {})).tolist()
    ctx["log"](f"calibration: {len(windows)} window(s) of {len(windows[0])} tokens from {ctx['calib_info']['data']}")
    hidden = lm.embed(windows)
    return [torch.cat(hidden[i:i + chunk]) for i in range(0, len(hidden), chunk)]


def _stats_adder(needs: str | None, stats: dict):
    """on_input(name, x) accumulating what the pruner needs: sum of x² per feature ("sq_norm"), or the
    sum of xxᵀ ("xtx") and the token count; ``_finish_stats`` turns the latter into the Hessian 2XᵀX/n.

    Linears fed the same tensor (q/k/v, gate/up) share one product: the last input is kept alive
    while cached, so its address cannot be reused by a different tensor.
    """
    last: dict[str, Any] = {}

    def add(name, x):
        x = x.reshape(-1, x.shape[-1])
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype)
        if last.get("key") != key:
            xf = x.float()
            val = (xf * xf).sum(0) if needs == "norm" else xf.t() @ xf if needs == "hessian" else None
            last.update(key=key, x=x, val=val)
        val = last["val"]
        st = stats.setdefault(name, {})
        if needs == "norm":
            st["sq_norm"] = val.clone() if "sq_norm" not in st else st["sq_norm"].add_(val)
        elif needs == "hessian":
            st["xtx"] = val.clone() if "xtx" not in st else st["xtx"].add_(val)
            st["n"] = st.get("n", 0) + x.shape[0]
    return add


def _finish_stats(stats: dict) -> None:
    """H = 2/n · XᵀX (SparseGPT's Hessian) from the sums ``_stats_adder`` collected."""
    for st in stats.values():
        if "xtx" in st:
            st["hessian"] = st.pop("xtx").mul_(2.0 / max(1, st["n"]))


def _unstructured_layerwise(ctx, *, pruner, target, pat, pattern, adaptive, metric, lam, needs_calib):
    """Unstructured / N:M pruning with one decoder layer in memory: model-free for plain magnitude,
    else the layer engine (slmctl.layerwise: weights read per layer, pruned outputs feed the next layer).
    GPT-2's Conv1D weights, stored (in, out), are pruned as (out, in) like every other linear."""
    from ..layerwise import linear_weight, linears, set_linear_weight
    from ..methods.prune.adaptive import allocate, outlier_ratio
    from ..methods.prune.depth import token_cos
    from ..methods.prune.wanda import wanda_score
    from ..surgery.layers import layer_index, n_layers

    art = ctx["art"]
    n = n_layers(art.config)
    in_mixer = _mixer_note(art.config, ctx["log"])
    ratios = [target] * n
    per_layer = {i: [0, 0] for i in range(n)}  # zeros, params
    sparsity = {"kind": pattern if pat else "unstructured", "target": target}
    recipe = {"sparsity": sparsity, "pattern": pattern,
              "adaptive": {"metric": metric, "lambda": lam} if adaptive else None, "_calibrated": needs_calib}
    rows: list[dict] = []

    def cast(name, t):
        dt = _torch_dtype(art.tensors[name].dtype)
        return t.to(dt) if dt is not None and t.is_floating_point() else t

    def finish():
        for i in range(n):
            z, p = per_layer[i]
            rows.append({"layer": i, "target": ratios[i], "sparsity": z / p if p else 0.0, "zeros": z, "params": p})
        sparsity["achieved"] = sum(r["zeros"] for r in rows) / max(1, sum(r["params"] for r in rows))
        sparsity["per_layer"] = [round(r["sparsity"], 6) for r in rows]

    if not needs_calib:  # magnitude: straight from the files, tensor by tensor
        transposed = _transposed(art.config)

        def gen():
            for name, lazy in art.tensors.items():
                t = lazy.load()
                i = layer_index(name)
                if i is not None and t.dim() == 2 and name.endswith(".weight") and not in_mixer(name[:-7]):
                    flip = any(name.endswith("." + suffix) for suffix in transposed)
                    new = pruner(t.float().t() if flip else t.float(), None, sparsity=ratios[i], pattern=pat)
                    new = new.t() if flip else new
                    per_layer[i][0] += int((new == 0).sum())
                    per_layer[i][1] += new.numel()
                    t = cast(name, new)
                yield name, t
            finish()
        return gen(), dict(art.config), recipe, rows

    from ..layerwise import iter_layers

    lm = _engine(ctx)
    hidden = _calib_hidden(ctx, lm)

    def lin_of(layer):
        return {nm: m for nm, m in linears(layer).items() if not in_mixer(nm)}

    if adaptive:
        scores: list[float] = []
        prev = None
        cos = [0.0] * n
        last = None
        for step in iter_layers(lm, hidden=hidden, capture=False, progress=ctx["progress"]):
            if prev is not None:
                s_, k_ = zip(*(token_cos(a, b) for a, b in zip(prev, step.hidden)))
                cos[step.idx - 1] = sum(s_) / sum(k_)
            prev = step.hidden
            if metric == "owl":
                st: dict = {}
                step.recapture(on_input=_stats_adder("norm", st))
                scores.append(outlier_ratio([wanda_score(linear_weight(m), st[nm]["sq_norm"])
                                             for nm, m in lin_of(step.layer).items()]))
            if step.idx == n - 1:
                last = step.run()
                s_, k_ = zip(*(token_cos(a, b) for a, b in zip(prev, last)))
                cos[n - 1] = sum(s_) / sum(k_)
        if metric == "bi":
            scores = [1.0 - x for x in cos]
        ratios[:] = allocate(scores, target, lam)
        ctx["log"]("adaptive sparsity per layer: " + ", ".join(f"{r:.3f}" for r in ratios))

    def gen():
        done: set[str] = set()
        for step in iter_layers(lm, hidden=hidden, capture=False, progress=ctx["progress"]):
            i = step.idx
            lin = lin_of(step.layer)
            stats: dict = {nm: {} for nm in lin}
            if pruner.needs is not None:
                step.recapture(list(lin), on_input=_stats_adder(pruner.needs, stats))
                _finish_stats(stats)
            for nm, m in lin.items():
                new = pruner(linear_weight(m), stats[nm], sparsity=ratios[i], pattern=pat)
                set_linear_weight(m, new)
                per_layer[i][0] += int((new == 0).sum())
                per_layer[i][1] += new.numel()
            for pname, src in lm.layer_tensor_names(i).items():
                t = step.layer.get_parameter(pname).detach().clone()
                done.add(src)
                yield src, cast(src, t)
        for name, lazy in art.tensors.items():  # embeddings, final norm, head: unchanged
            if name not in done:
                yield name, lazy.load()
        finish()
    return gen(), dict(art.config), recipe, rows


# ---------------------------------------------------------------- depth
def _depth(ctx, *, layers, ratio, metric):
    from ..methods.prune.depth import DEPTH_METRICS, BoundaryCos, choose_layers
    from ..surgery.layers import drop_layers, n_layers, renamed_config

    DEPTH_METRICS.get(metric)
    art = ctx["art"]
    n = n_layers(art.config)
    if ratio is not None:
        if not 0.0 < ratio < 1.0:
            raise UsageError(f"--ratio {ratio} must be between 0 and 1")
        layers = max(1, int(round(n * ratio)))
    k = layers
    if not 0 < k < n:
        raise UsageError(f"cannot remove {k} of {n} layers", hint=f"choose --layers between 1 and {n - 1}")
    stats = None
    if metric != "last":  # one decoder layer in memory at a time
        from ..layerwise import iter_layers

        lm = _engine(ctx)
        hidden = _calib_hidden(ctx, lm)
        stats = BoundaryCos(n, k)
        for step in iter_layers(lm, hidden=hidden, capture=False, progress=ctx["progress"]):
            stats.push(step.hidden)
            if step.idx == n - 1:
                stats.push(step.run())
        del lm
    drop = choose_layers(n, k, metric, stats)
    ctx["log"](f"dropping layer(s) {drop} of {n} ({metric})")
    rename = drop_layers(list(art.tensors), drop, n)
    config = renamed_config(art.config, drop)
    if config.get("model_type") == "smollm3":
        from ..arch import rope_pattern_problem

        if rope_pattern_problem(config):
            ctx["log"](f"warning: {rope_pattern_problem(config)}: the output will not export to GGUF; drop whole "
                       "groups of 4 layers (e.g. --depth-metric last --layers 4) to keep it exportable")
    rows = []
    bi = stats.block_influence() if stats else None
    ang = stats.angular() if stats else None
    for i in range(n):
        row = {"layer": i, "dropped": i in drop}
        if bi is not None:
            row["block_influence"] = bi[i]
        rows.append(row)
    recipe = {"layers_removed": drop, "k": k, "metric": metric, "layers_before": n, "layers_after": n - k,
              "angular_distance": ang, "_calibrated": metric != "last"}
    return _stream_state(art, {}, rename), config, recipe, rows


# ---------------------------------------------------------------- width
def _width(ctx, *, heads_ratio, mlp_ratio, hidden_ratio, adaptive, lam):
    import torch

    from ..layerwise import final_norm, iter_layers
    from ..methods.prune.adaptive import allocate
    from ..methods.prune.depth import BoundaryCos
    from ..methods.prune.width_importance import Importance, head_activations, keep_count, keep_heads, top_k
    from ..surgery.width import PER_LAYER_KEY, family, shrink

    art = ctx["art"]
    cfg = art.config
    fam = family(cfg, hidden=hidden_ratio > 0)
    if cfg.get(PER_LAYER_KEY):
        raise UnsupportedError(f"{ctx['path']}: width pruning of a model that already has per-layer widths is not supported")
    n = cfg["num_hidden_layers"]
    H = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads") or H
    inter = cfg["intermediate_size"]
    D = cfg["hidden_size"]
    imp_h = [Importance() for _ in range(n)]
    imp_m = [Importance() for _ in range(n)]
    imp_d = Importance()
    bc = BoundaryCos(n, 1)

    def hook_layer(layer, i):
        # on an accelerator the layer runs there: the statistics are kept on the CPU (.cpu(): no copy on the CPU)
        hooks = [layer.self_attn.o_proj.register_forward_pre_hook(
                     lambda m, a, i=i: imp_h[i].add(head_activations(a[0], H).cpu())),
                 layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: imp_m[i].add(a[0].cpu()))]
        for norm in fam["norms"]:
            mod = getattr(layer, norm, None)
            if mod is not None:
                hooks.append(mod.register_forward_hook(lambda m, a, o: imp_d.add(o.cpu())))
        return hooks

    # one decoder layer in memory at a time
    lm = _engine(ctx)
    hidden = _calib_hidden(ctx, lm)
    last = None
    for step in iter_layers(lm, hidden=hidden, capture=False, progress=ctx["progress"]):
        bc.push(step.hidden)
        hooks = hook_layer(step.layer, step.idx)
        try:
            outs = step.run()
        finally:
            for h in hooks:
                h.remove()
        if step.idx == n - 1:
            last = outs
    bc.push(last)
    fn = final_norm(lm.model)
    wname = f"{fam['final_norm']}.weight"
    if fn is not None and wname in art.tensors:
        fn.weight = torch.nn.Parameter(art.tensors[wname].load().float(), requires_grad=False)
        with torch.no_grad():
            for x in last:
                imp_d.add(fn(x))
    del lm
    head_r = [heads_ratio] * n
    mlp_r = [mlp_ratio] * n
    if adaptive:
        bi = bc.block_influence()
        head_r = allocate(bi, heads_ratio, lam) if heads_ratio else head_r
        mlp_r = allocate(bi, mlp_ratio, lam) if mlp_ratio else mlp_r
    mult = 32 if inter % 32 == 0 and inter >= 128 else 1
    plan: dict[str, Any] = {"heads": {}, "mlp": {}, "hidden": None}
    for i in range(n):
        if heads_ratio:
            plan["heads"][i] = keep_heads(imp_h[i].value(), H, KV, head_r[i])
        if mlp_ratio:
            plan["mlp"][i] = top_k(imp_m[i].value(), keep_count(inter, mlp_r[i], mult))
    if hidden_ratio:
        plan["hidden"] = top_k(imp_d.value(), keep_count(D, hidden_ratio, 32 if D % 32 == 0 and D >= 128 else 1))
    _, config = shrink({}, cfg, plan)

    def gen():  # tensor by tensor: each is cut on its own
        for nm, lazy in art.tensors.items():
            yield nm, shrink({nm: lazy.load()}, cfg, plan)[0][nm]

    per = config.get(PER_LAYER_KEY, {})
    rows = []
    for i in range(n):
        rows.append({"layer": i,
                     "num_attention_heads": per.get("num_attention_heads", [config["num_attention_heads"]] * n)[i],
                     "num_key_value_heads": per.get("num_key_value_heads", [config["num_key_value_heads"]] * n)[i],
                     "intermediate_size": per.get("intermediate_size", [config["intermediate_size"]] * n)[i],
                     "heads_kept": plan["heads"].get(i, (list(range(H)), None))[0]})
    recipe = {"heads_ratio": heads_ratio, "mlp_ratio": mlp_ratio, "hidden_ratio": hidden_ratio,
              "adaptive": {"metric": "bi", "lambda": lam} if adaptive else None,
              "hidden_size": [D, config["hidden_size"]], "per_layer": bool(per)}
    if per:
        ctx["log"](PER_LAYER_NOTE)
    return gen(), config, recipe, rows


# ---------------------------------------------------------------- quality
def _quality(out: str, src: str, *, data, calib, field, ctx, windows, log) -> dict[str, Any]:
    """The quality report (slmctl.eval.compare) of the pruned model against its input on held-out text of each
    domain in ``data`` (the calibration domain's eval region and one it did not see, by default); the first
    domain fills the top-level figures. ``slmctl eval`` loads per-layer widths too
    (slmctl.surgery.width.load_per_layer_model)."""
    q = quality_report(out, src, data=data, calib=calib, field=field, ctx=ctx, windows=windows, log=log)
    q.pop("eval")
    return q
