"""All HTTP routes of the app, in one place."""

from __future__ import annotations

from fastapi import APIRouter

from townsquare.api import health, openai, openai_images
from townsquare.features.assistant import group_routes as group_assistant
from townsquare.features.assistant import routes as assistant
from townsquare.features.feedback import routes as feedback
from townsquare.features.groups import routes as groups
from townsquare.features.imagine import routes as imagine
from townsquare.features.provenance import routes as provenance
from townsquare.features.reels import routes as reels
from townsquare.features.safety import routes as safety
from townsquare.features.search import routes as search
from townsquare.features.shops import routes as shops
from townsquare.features.suggestions import routes as suggestions
from townsquare.features.webhooks import routes as webhooks
from townsquare.social import routes as social

router = APIRouter()
router.include_router(health.router)
router.include_router(assistant.router)
router.include_router(group_assistant.router)
router.include_router(webhooks.router)
router.include_router(openai.router)
router.include_router(openai_images.router)
# before the social routes: /api/listings/search must win over /api/listings/{listing_id}
router.include_router(search.router)
router.include_router(reels.router)
router.include_router(suggestions.router)
router.include_router(groups.router)
router.include_router(shops.router)
router.include_router(provenance.router)
router.include_router(imagine.router)
router.include_router(feedback.router)
router.include_router(safety.router)
router.include_router(social.router)
