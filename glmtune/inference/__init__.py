"""Generation over a loaded model: the engine every verb that answers prompts uses (chat, webchat, predict,
eval, the HTTP API, export's check) and the continuous-batching engine behind it.

Below serve, evaluate, export and train: it imports no verb; a run folder's model comes from `glmtune.run`.
"""
