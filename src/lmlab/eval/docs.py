"""Row preprocessing named by task YAMLs (`process_docs: !function lmlab.eval.docs.<name>`)."""

from __future__ import annotations

import re


def clean_wikihow(text: str) -> str:
    """HellaSwag's WikiHow rows carry markup: " [title]" becomes ". ", other [...] markers are removed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(dataset):
    """HellaSwag rows (ctx_a, ctx_b, activity_label, endings, label) -> query / choices / gold, the prompt of
    lm-eval's hellaswag task: "<activity_label>: <ctx_a> <Ctx_b>" and the cleaned endings."""

    def convert(row):
        context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        return {"query": clean_wikihow(row["activity_label"] + ": " + context),
                "choices": [clean_wikihow(ending) for ending in row["endings"]],
                "gold": int(row["label"])}

    return dataset.map(convert)
