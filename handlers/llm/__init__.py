"""Model-provider layer: a provider-neutral message model, one adapter per wire format.

Import the neutral types from :mod:`handlers.llm.messages`, the client interface, errors
and wrappers from :mod:`handlers.llm.base`, and get a client with
:func:`handlers.llm.base.resolve_model` (``"openai:<model>"``, ``"anthropic:<model>"``,
``"local:<name>"``).
"""
