"""Service Bus queue trigger: a training request arrives."""

import azure.functions as func

from shared.composition import wiring
from shared.settings import QUEUE_NAME

bp = func.Blueprint()


@bp.function_name("intake")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name=QUEUE_NAME, connection="ServiceBusConnection")
def intake(msg: func.ServiceBusMessage) -> None:
    # A transient error propagates: the message is abandoned and redelivered.
    # Its application properties carry the sender's trace context (traceparent / Diagnostic-Id).
    wiring().service.intake(
        msg.get_body(),
        message_id=msg.message_id,
        delivery_count=msg.delivery_count or 1,
        trace_context=msg.application_properties,
    )
