"""Service Bus topic trigger: deliver a completion message to webhooks and Teams."""

import logging

import azure.functions as func
from pydantic import ValidationError

from shared.composition import wiring
from shared.contracts.completion import CompletionMessage
from shared.contracts.models import MODEL_PROMOTED, PromotionEvent
from shared.settings import SUBSCRIPTION_NAME, TOPIC_NAME

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("notifier")
@bp.service_bus_topic_trigger(
    arg_name="msg",
    topic_name=TOPIC_NAME,
    subscription_name=SUBSCRIPTION_NAME,
    connection="ServiceBusConnection",
)
def notifier(msg: func.ServiceBusMessage) -> None:
    if (msg.user_properties or {}).get("event") == MODEL_PROMOTED:
        # a champion change: the completion message of its run already said it; the champion is
        # shown where its backend's users look (Azure ML's model registry), idempotently
        try:
            event = PromotionEvent.model_validate_json(msg.get_body())
        except ValidationError as err:
            log.error("model-promoted event %s is not valid and is dropped: %s", msg.message_id, err)
            return
        wiring().service.mirror_champion(event)
        return
    try:
        message = CompletionMessage.model_validate_json(msg.get_body())
    except ValidationError as err:  # not ours to fix by retrying
        log.error("completion message %s is not valid and is dropped: %s", msg.message_id, err)
        return
    wiring().service.notify(message, trace_context=msg.application_properties)  # the run's trace goes on
