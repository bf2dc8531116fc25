"""Which of a bundle's graphs ``engine=auto`` serves: the fastest one that is faithful to ``model.onnx``.

A reduced-precision graph (``model.int8.onnx``, ``model.fp16.onnx``) is served by ``auto`` only when its
records in the manifest, measured by ``deltagate quantize`` on the bundle's own data and on the provider
that would serve it, say that it

- gives clients the same labels: of the images both graphs accept, at least
  :attr:`FidelityThresholds.min_accepted_label_agreement` get the same label;
- takes the same gate decisions: at most :attr:`FidelityThresholds.max_gate_flip_rate` of the images
  change their OOD decision (each graph at its own threshold);
- reports nearly the same ΔEnergy: the mean \\|ΔEnergy difference\\| is at most
  :attr:`FidelityThresholds.max_delta_energy_error` standard deviations of the float32 ΔEnergy of ID images;
- is faster: at least :attr:`FidelityThresholds.min_speedup` times the float32 graph's images/s at every
  batch size measured.

Otherwise ``model.onnx`` serves. docs/bundle.md ("Which graph `engine=auto` serves") gives the reasons
for each number. The int8 graph runs on the CPU provider only; the float16 graph is for CUDA, so each is
considered only where it can serve, and only with records measured on that provider.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.bundle import Bundle, Fp16Info, GraphParity, Int8Info

__all__ = ["FidelityThresholds", "FIDELITY", "GraphCheck", "check_graph", "check_graphs", "VARIANT_TAGS",
           "CPU_PROVIDER", "CUDA_PROVIDER", "SERVES_ON"]

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
VARIANT_TAGS = ("int8", "fp16")  # the reduced-precision graphs a bundle may carry (manifest fields)
SERVES_ON = {"int8": CPU_PROVIDER, "fp16": CUDA_PROVIDER}  # the only provider each graph is served on by auto


@dataclass(frozen=True)
class FidelityThresholds:
    """What a reduced-precision graph's records must show for ``auto`` to serve it (docs/bundle.md)."""

    min_accepted_label_agreement: float = 0.99  # at most 1 label in 100 that a client is given changes
    max_gate_flip_rate: float = 0.01  # at most 1 OOD decision in 100 changes: within the threshold's own noise
    max_delta_energy_error: float = 0.1  # mean |ΔE diff| in std of the float32 ΔEnergy of ID images
    min_speedup: float = 1.1  # variant / float32 images/s at every measured batch size


FIDELITY = FidelityThresholds()


@dataclass(frozen=True)
class GraphCheck:
    """The verdict on one reduced-precision graph.

    ``code`` is short and stable (the ``engine_reason`` label of ``deltagate_model_info``): ``passed``,
    ``no_graph``, ``cpu_only``, ``cuda_only``, ``no_threshold``, ``no_parity_record``, ``other_provider``,
    ``parity_failed``, ``no_speed_record`` or ``not_faster``. ``detail`` says it in a sentence with the numbers.
    """

    tag: str  # "int8" or "fp16"
    passed: bool
    code: str
    detail: str
    speedup: float | None = None  # the smallest recorded speed-up over batch sizes (None: not recorded)

    def to_dict(self) -> dict[str, object]:
        return {"graph": self.tag, "passed": self.passed, "code": self.code, "detail": self.detail}


def _fails(parity: GraphParity, t: FidelityThresholds) -> list[str]:
    """Each threshold the record misses, as a phrase (empty: every one is met)."""
    assert parity.accepted_label_agreement is not None and parity.gate_flips is not None
    assert parity.id_delta_energy_std is not None
    out = []
    if parity.accepted_label_agreement < t.min_accepted_label_agreement:
        out.append(f"labels of accepted images agree on {parity.accepted_label_agreement:.4f} "
                   f"< {t.min_accepted_label_agreement}")
    flip_rate = parity.gate_flips / parity.images
    if flip_rate > t.max_gate_flip_rate:
        out.append(f"{parity.gate_flips} of {parity.images} gate decisions flip "
                   f"({flip_rate:.4f} > {t.max_gate_flip_rate})")
    error = parity.mean_abs_delta_energy_diff / parity.id_delta_energy_std if parity.id_delta_energy_std > 0 else 0.0
    if error > t.max_delta_energy_error:
        out.append(f"mean |ΔEnergy diff| is {error:.3f} std of ID ΔEnergy (> {t.max_delta_energy_error})")
    return out


def _summary(parity: GraphParity) -> str:
    assert parity.accepted_label_agreement is not None and parity.id_delta_energy_std is not None
    std = parity.id_delta_energy_std
    return (f"accepted labels agree {parity.accepted_label_agreement:.4f}, {parity.gate_flips} of {parity.images} "
            f"gate decisions flip, mean |ΔEnergy diff| {parity.mean_abs_delta_energy_diff / std if std else 0.0:.3f} "
            "std")


def check_graph(bundle: Bundle, tag: str, provider: str, t: FidelityThresholds = FIDELITY) -> GraphCheck:
    """Whether ``auto`` may serve the bundle's ``tag`` graph where the service runs on ``provider``.

    Args:
        bundle: the loaded bundle.
        tag: ``int8`` or ``fp16``.
        provider: where the service's ONNX engine would run (``CPUExecutionProvider`` or ``CUDAExecutionProvider``).
        t: the thresholds.
    """
    info: Int8Info | Fp16Info | None = getattr(bundle.manifest, tag)
    if info is None or info.file not in bundle.manifest.files:
        return GraphCheck(tag, False, "no_graph", f"the bundle has no {tag} graph")
    if provider != SERVES_ON[tag]:
        code = "cpu_only" if tag == "int8" else "cuda_only"
        return GraphCheck(tag, False, code, f"the {tag} graph is served on {SERVES_ON[tag]} only; the service "
                          f"runs on {provider}")
    if isinstance(info, Int8Info) and info.calibration is None:
        return GraphCheck(tag, False, "no_threshold", f"the {tag} graph has no threshold of its own (quantize "
                          "with --data)")
    parity = info.parity
    if (not parity.bundle_data or parity.gate_flips is None or parity.accepted_label_agreement is None
            or parity.id_delta_energy_std is None):
        return GraphCheck(tag, False, "no_parity_record", f"no parity record of the {tag} graph on the bundle's own "
                          f"data with its gate decisions (recorded: {parity.data}); re-run `deltagate quantize "
                          f"--precision {tag} --data ROOT`")
    if parity.provider != provider or (info.speed is not None and info.speed.provider != provider):
        return GraphCheck(tag, False, "other_provider", f"the {tag} graph's records were measured on "
                          f"{parity.provider}, the service runs on {provider}")
    fails = _fails(parity, t)
    if fails:
        return GraphCheck(tag, False, "parity_failed", f"the {tag} graph is not faithful: {'; '.join(fails)}")
    if info.speed is None or not info.speed.speedup:
        return GraphCheck(tag, False, "no_speed_record", f"the {tag} graph is faithful ({_summary(parity)}) but "
                          "its speed was not recorded; re-run `deltagate quantize`")
    speedup = min(info.speed.speedup.values())
    speeds = ", ".join(f"{v:.2f}x at batch {b}" for b, v in info.speed.speedup.items())
    if speedup < t.min_speedup:
        return GraphCheck(tag, False, "not_faster", f"the {tag} graph is faithful ({_summary(parity)}) but not "
                          f"faster: {speeds} (< {t.min_speedup}x) on {info.speed.cpu}", speedup)
    return GraphCheck(tag, True, "passed", f"the {tag} graph is faithful ({_summary(parity)}) and faster: {speeds} "
                      f"on {info.speed.cpu}", speedup)


def check_graphs(bundle: Bundle, provider: str, t: FidelityThresholds = FIDELITY) -> list[GraphCheck]:
    """Every reduced-precision graph's verdict, fastest passing one first (then the failing ones, in tag order)."""
    checks = [check_graph(bundle, tag, provider, t) for tag in VARIANT_TAGS]
    return sorted(checks, key=lambda c: (not c.passed, -(c.speedup or 0.0) if c.passed else 0.0))
