"""glmtune: from a chat-format JSONL to a fine-tuned, evaluated, exported and served GLM-family model.

The package folders follow the user's path: data -> plan -> train -> evaluate -> export -> serve,
with tasks/ holding task recipes (oral reading scoring). Nothing heavy is imported here, so
`glmtune --help` stays instant.
"""

__version__ = "0.1.0"
