"""What an ingest job will cost on AWS, printed before the first image is embedded.

Titan Multimodal Embeddings bills per image and OpenSearch Serverless per OCU-hour, so a
million-image job is a real bill: the estimate shows the figures it used and where they come
from, and every price is a setting (``SEARCH_PRICE_*``, ``SEARCH_COST_*`` in
:mod:`search_core.config`) because prices differ by region and change over time.

Defaults are AWS public on-demand prices for us-east-1 (checked for this release):
- Titan Multimodal Embeddings G1 (``amazon.titan-embed-image-v1``): $0.00006 per input image
  (batch inference: $0.00003); text input $0.0008 per 1,000 tokens.
- OpenSearch Serverless: $0.24 per OCU-hour (indexing and search are billed separately), managed
  storage $0.024 per GB-month. A collection bills its minimum OCUs for as long as it exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from search_core.config import Settings

#: Titan answers one image in roughly 0.25 s, so each parallel call adds about 4 images/s.
TITAN_IMAGES_PER_S_PER_CALL = 4.0
#: an HNSW knn_vector costs about 1.5x the raw float32 bytes on disk (graph + doc source)
STORAGE_OVERHEAD = 1.5


@dataclass(frozen=True)
class Prices:
    titan_image: float = 0.00006
    aoss_ocu_hour: float = 0.24
    aoss_storage_gb_month: float = 0.024
    aoss_indexing_ocus: float = 2.0
    images_per_s: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Prices:
        return cls(
            titan_image=settings.price_titan_image,
            aoss_ocu_hour=settings.price_aoss_ocu_hour,
            aoss_storage_gb_month=settings.price_aoss_storage_gb_month,
            aoss_indexing_ocus=settings.cost_aoss_indexing_ocus,
            images_per_s=settings.cost_images_per_s,
        )

    @classmethod
    def from_env(cls) -> Prices:
        """The prices alone: a bad price is an error, the rest of the configuration is not
        read (an estimate needs no model or index settings)."""
        read = Settings.read
        return cls(
            titan_image=read("price_titan_image"),
            aoss_ocu_hour=read("price_aoss_ocu_hour"),
            aoss_storage_gb_month=read("price_aoss_storage_gb_month"),
            aoss_indexing_ocus=read("cost_aoss_indexing_ocus"),
            images_per_s=read("cost_images_per_s"),
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
