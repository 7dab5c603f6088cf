"""The rate card: what each operation costs, in credits (1 credit = 1 USD).

Rates are the published figures (document 000, "What credits cost") and the voice-session cost
components (document 003, "Pricing & Cost Calculation"). Costs keep full precision here; the
ledger rounds half-up to 4 places when it posts.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Rate:
    operation: str
    category: str
    unit: str
    price: Decimal  # per `per` units
    per: Decimal = Decimal(1)
    label: str = ""

    def cost(self, quantity: Decimal) -> Decimal:
        return self.price * quantity / self.per


RATE_CARD: dict[str, Rate] = {
    r.operation: r
    for r in (
        Rate("ai_call", "ai_call", "minute", Decimal("0.0168"), label="AI call"),
        Rate("call_recording", "call_recording", "minute", Decimal("0.003"), label="Call recording"),
        Rate("whatsapp", "whatsapp", "message", Decimal("0.006"), label="WhatsApp message"),
        Rate("sms_twilio", "sms", "segment", Decimal("0.009"), label="SMS (Twilio)"),
        Rate("sms_telnyx", "sms", "segment", Decimal("0.006"), label="SMS (Telnyx)"),
        Rate("email", "email", "recipient", Decimal("0.00036"), label="Email"),
        Rate("transcription_deepgram", "transcription", "minute", Decimal("0.00708"), label="Deepgram transcription"),
        Rate("tts_elevenlabs", "tts", "1k characters", Decimal("0.036"), Decimal(1000), label="ElevenLabs TTS"),
    )
}


@dataclass(frozen=True)
class SessionComponents:
    """Per-minute (voice) or per-message (chat) cost components of a billing session."""

    base: Decimal = Decimal(0)
    llm: Decimal = Decimal(0)
    stt: Decimal = Decimal(0)
    tts: Decimal = Decimal(0)

    def breakdown(self, quantity: Decimal) -> dict[str, Decimal]:
        return {
            "base": self.base * quantity,
            "llm": self.llm * quantity,
            "stt": self.stt * quantity,
            "tts": self.tts * quantity,
        }


SESSION_COMPONENTS: dict[str, SessionComponents] = {
    # pipeline voice: base + LLM + STT + TTS, per minute
    "pipeline": SessionComponents(Decimal("0.05"), Decimal("0.015"), Decimal("0.003"), Decimal("0.005")),
    # realtime voice: base + realtime model (STT/TTS included), per minute
    "realtime": SessionComponents(Decimal("0.05"), Decimal("0.06")),
    # chat: LLM per message only
    "chat": SessionComponents(llm=Decimal("0.001")),
}


def session_cost(architecture: str, quantity: Decimal) -> tuple[Decimal, dict[str, Decimal]]:
    breakdown = SESSION_COMPONENTS[architecture].breakdown(quantity)
    return sum(breakdown.values(), Decimal(0)), breakdown


# OpenAI provider cost in USD per 1M tokens (input, output); billed with the configured markup.
OPENAI_MODELS: dict[str, tuple[Decimal, Decimal]] = {
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "gpt-4.1": (Decimal("2.00"), Decimal("8.00")),
    "gpt-4.1-mini": (Decimal("0.40"), Decimal("1.60")),
}


def openai_rate(model: str | None, kind: str) -> Decimal | None:
    rates = OPENAI_MODELS.get(model or "")
    if rates is None:
        return None
    return rates[0] if kind == "input" else rates[1]


@dataclass(frozen=True)
class CreditPackage:
    id: str
    credits: Decimal
    price: Decimal  # USD; 1 credit = 1 USD

    @property
    def name(self) -> str:
        return f"${self.price:,.0f} package"


PACKAGES: tuple[CreditPackage, ...] = tuple(
    CreditPackage(f"pkg_{n}", Decimal(n), Decimal(n)) for n in (50, 200, 500, 1000)
)
CUSTOM_MIN = Decimal(1)
CUSTOM_MAX = Decimal(100)
