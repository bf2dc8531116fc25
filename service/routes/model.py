"""Model information."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter

from models.quality import bundle_checks
from service.deps import ApiKeyDep, RuntimeDep
from service.schemas import EngineChoiceInfo, ErrorResponse, ModelCheck, ModelInfoResponse, QuantileSummary

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelInfoResponse,
            responses={401: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
def model_info(runtime: RuntimeDep, _auth: ApiKeyDep) -> ModelInfoResponse:
    """The loaded model: classes, threshold, score parameters, bundle hashes, and what runs it per instance."""
    model, _ = runtime.require_ready()
    m, s, plan, facts = model.manifest, runtime.settings, runtime.plan, runtime.engine_facts()
    assert m.calibration is not None  # the runtime refuses bundles without calibration
    return ModelInfoResponse(
        name=m.name, version=m.version, description=m.description, created_at=m.created_at,
        architecture=m.architecture.model_name,
        classes=m.classes, num_classes=len(m.classes), threshold=m.calibration.threshold,
        target_tpr=m.calibration.target_tpr,
        calibration=m.calibration.model_dump(exclude={"quantile_levels", "quantile_values"}),
        scores=dataclasses.asdict(m.scores),  # every score's own parameters (ΔEnergy's, energy's, MCM's)
        logit_scale=m.logit_scale, preprocess=m.preprocess.model_dump(),
        files={name: entry.model_dump() for name, entry in m.files.items()},
        engine=model.engine.name, device=facts["device"], precision=facts["precision"],
        engine_choice=EngineChoiceInfo.model_validate(model.choice.to_dict()) if model.choice else None,
        instances=[instance.engine.describe() for instance in runtime.instances],
        batching={"max_batch_size": s.max_batch_size, "max_wait_ms": s.max_wait_ms,
                  "max_queue_size": s.max_queue_size, "max_images_per_request": s.max_images_per_request,
                  "instances": plan.instances, "intra_op_threads": plan.intra_op_threads,
                  "decode_workers": plan.decode_workers, "cpu_budget": plan.budget,
                  "device_decode": runtime.device_decode},
        calibration_quantiles=QuantileSummary(levels=m.calibration.quantile_levels,
                                              values=m.calibration.quantile_values),
        evaluation=m.evaluation,
        checks=[ModelCheck(name=c.name, ok=c.ok, message=c.message) for c in bundle_checks(m)],
    )
