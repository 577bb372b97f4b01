"""What an ingest job will cost on AWS, printed before the first image is embedded.

Titan Multimodal Embeddings bills per image and OpenSearch Serverless per OCU-hour, so a
million-image job is a real bill: the estimate shows the figures it used and where they come
from, and every price is overridable from the environment because prices differ by region and
change over time.

Defaults are AWS public on-demand prices for us-east-1 (checked for this release):
- Titan Multimodal Embeddings G1 (``amazon.titan-embed-image-v1``): $0.00006 per input image
  (batch inference: $0.00003); text input $0.0008 per 1,000 tokens.
- OpenSearch Serverless: $0.24 per OCU-hour (indexing and search are billed separately), managed
  storage $0.024 per GB-month. A collection bills its minimum OCUs for as long as it exists.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from search_core.errors import ConfigError

#: (environment variable, default, meaning): shown in the estimate and in docs/scale-out.md
PRICE_SETTINGS: list[tuple[str, str, str]] = [
    ("SEARCH_PRICE_TITAN_IMAGE", "0.00006", "USD per image embedded by Titan Multimodal G1."),
    ("SEARCH_PRICE_AOSS_OCU_HOUR", "0.24", "USD per OpenSearch Serverless OCU-hour."),
    ("SEARCH_PRICE_AOSS_STORAGE_GB_MONTH", "0.024", "USD per GB-month of AOSS storage."),
    ("SEARCH_COST_AOSS_INDEXING_OCUS", "2", "Indexing OCUs assumed busy during the job."),
    ("SEARCH_COST_IMAGES_PER_S", "", "Assumed ingest speed (default: Titan concurrency x 4/s)."),
]

#: Titan answers one image in roughly 0.25 s, so each parallel call adds about 4 images/s.
TITAN_IMAGES_PER_S_PER_CALL = 4.0
#: an HNSW knn_vector costs about 1.5x the raw float32 bytes on disk (graph + doc source)
STORAGE_OVERHEAD = 1.5


def _price(name: str, default: str) -> float:
    raw = os.environ.get(name, "").strip() or default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


@dataclass(frozen=True)
class Prices:
    titan_image: float = 0.00006
    aoss_ocu_hour: float = 0.24
    aoss_storage_gb_month: float = 0.024
    aoss_indexing_ocus: float = 2.0
    images_per_s: float | None = None

    @classmethod
    def from_env(cls) -> Prices:
        speed = os.environ.get("SEARCH_COST_IMAGES_PER_S", "").strip()
        return cls(
            titan_image=_price("SEARCH_PRICE_TITAN_IMAGE", "0.00006"),
            aoss_ocu_hour=_price("SEARCH_PRICE_AOSS_OCU_HOUR", "0.24"),
            aoss_storage_gb_month=_price("SEARCH_PRICE_AOSS_STORAGE_GB_MONTH", "0.024"),
            aoss_indexing_ocus=_price("SEARCH_COST_AOSS_INDEXING_OCUS", "2"),
            images_per_s=_price("SEARCH_COST_IMAGES_PER_S", speed) if speed else None,
        )


@dataclass(frozen=True)
class CostEstimate:
    images: int
    titan_usd: float
    aoss_indexing_usd: float
    aoss_storage_usd_month: float
    hours: float
    images_per_s: float
    prices: Prices
    embedder: str
    index: str

    @property
    def total_usd(self) -> float:
        """What the job itself adds (storage is per month and listed apart)."""
        return self.titan_usd + self.aoss_indexing_usd

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "titan_usd": round(self.titan_usd, 6),
            "aoss_indexing_usd": round(self.aoss_indexing_usd, 6),
            "aoss_storage_usd_month": round(self.aoss_storage_usd_month, 6),
            "total_usd": round(self.total_usd, 6),
            "hours": round(self.hours, 3),
            "images_per_s": round(self.images_per_s, 2),
            "prices": asdict(self.prices),
        }

    def lines(self) -> list[str]:
        """Human-readable estimate that names every figure it used."""
        p = self.prices
        out = [f"cost estimate for up to {self.images:,} images "
               f"(embedder {self.embedder}, index {self.index}):"]
        if self.titan_usd or self.embedder == "titan":
            out.append(f"  Titan image embeddings: {self.images:,} x ${p.titan_image:g} "
                       f"= ${self.titan_usd:,.2f}  (SEARCH_PRICE_TITAN_IMAGE)")
        if self.index == "opensearch":
            out.append(
                f"  OpenSearch Serverless indexing: {self.hours:.2f} h at "
                f"{self.images_per_s:.1f} images/s x {p.aoss_indexing_ocus:g} OCU x "
                f"${p.aoss_ocu_hour:g}/OCU-h = ${self.aoss_indexing_usd:,.2f}  "
                "(SEARCH_COST_IMAGES_PER_S, SEARCH_COST_AOSS_INDEXING_OCUS, "
                "SEARCH_PRICE_AOSS_OCU_HOUR)"
            )
            out.append(
                f"  OpenSearch Serverless storage: ${self.aoss_storage_usd_month:,.4f}/month at "
                f"${p.aoss_storage_gb_month:g}/GB-month; the collection's minimum OCUs bill "
                "separately for as long as it exists"
            )
        out.append(f"  total for this job: about ${self.total_usd:,.2f} "
                   "(unchanged and duplicate images are skipped, so usually less)")
        return out


def needs_estimate(embedder: str, index: str) -> bool:
    """Only paid backends get an estimate (the local ones cost nothing per image)."""
    return embedder == "titan" or index == "opensearch"


def estimate_ingest(
    images: int,
    *,
    embedder: str,
    index: str,
    dimension: int,
    titan_concurrency: int = 8,
    local_images_per_s: float = 40.0,
    prices: Prices | None = None,
) -> CostEstimate:
    """Estimate for embedding ``images`` new images with ``embedder`` into ``index``."""
    prices = prices or Prices.from_env()
    images = max(0, int(images))
    speed = prices.images_per_s or (
        max(1, titan_concurrency) * TITAN_IMAGES_PER_S_PER_CALL
        if embedder == "titan" else local_images_per_s
    )
    hours = images / speed / 3600
    titan = images * prices.titan_image if embedder == "titan" else 0.0
    aoss_indexing = aoss_storage = 0.0
    if index == "opensearch":
        aoss_indexing = hours * prices.aoss_indexing_ocus * prices.aoss_ocu_hour
        gigabytes = images * dimension * 4 * STORAGE_OVERHEAD / 1e9
        aoss_storage = gigabytes * prices.aoss_storage_gb_month
    return CostEstimate(
        images=images, titan_usd=titan, aoss_indexing_usd=aoss_indexing,
        aoss_storage_usd_month=aoss_storage, hours=hours, images_per_s=speed, prices=prices,
        embedder=embedder, index=index,
    )
