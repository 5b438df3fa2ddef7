"""GET /models: what the service can regenerate with, read from each bundle's manifest."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import CallerDep, EnginesDep
from app.routes import error_responses
from core.engines import Engine
from core.schemas import DomainInfo, ModelInfo, ModelList, ModelLoadError

router = APIRouter(tags=["models"])

_EXAMPLE = {
    "models": [
        {
            "name": "ml100k",
            "format_version": 1,
            "n_items": 1682,
            "domains": [
                {"name": "action", "n_items": 251},
                {"name": "comedy", "n_items": 505},
                {"name": "drama", "n_items": 725},
                {"name": "thriller", "n_items": 201},
            ],
            "hyper_parameters": {"n_items": 1682, "max_len": 128, "hidden": 128, "n_layers": 2, "n_heads": 2},
            "training": {"epochs": 58, "adapt_epochs": 20, "seed": 42},
            "metrics": {"mixed": {"HR@10": 0.081, "NDCG@10": 0.041}},
            "data_fingerprint": "9b1f0c3e5a7d2b64",
        }
    ],
    "errors": [{"model": "broken", "code": "bad_bundle", "message": "checksum mismatch for mixed.safetensors"}],
}


def model_info(engine: Engine) -> ModelInfo:
    m, cat = engine.manifest, engine.catalogue
    return ModelInfo(
        name=engine.name,
        format_version=m["format_version"],
        n_items=cat.n_items,
        domains=[DomainInfo(name=d, n_items=cat.domain_size(k)) for k, d in enumerate(cat.domains)],
        hyper_parameters=m.get("model_config", {}),
        training=m.get("training", {}),
        metrics=m.get("metrics", {}),
        data_fingerprint=m.get("data_fingerprint"),
    )


@router.get(
    "/models",
    response_model=ModelList,
    summary="Loaded bundles: domains, sizes, hyper-parameters, training metrics",
    responses={200: {"content": {"application/json": {"example": _EXAMPLE}}}, **error_responses("unauthorized")},
)
async def list_models(engines: EnginesDep, _caller: CallerDep) -> ModelList:
    return ModelList(
        models=[model_info(engines.engines[n]) for n in engines.names],
        errors=[ModelLoadError(model=f.name, code=f.code, message=f.message) for f in engines.failures],
    )
