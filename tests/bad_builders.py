"""Dataset builders that return the wrong thing, for the pre-flight tests (given as 'bad_builders:<name>')."""
import datasets


def zero_rows(**kw):
    return datasets.Dataset.from_dict({"prompt": []})


def a_list(**kw):
    return [{"prompt": "What is 1+1?"}]


def no_prompt(**kw):
    return datasets.Dataset.from_dict({"question": ["What is 1+1?", "What is 2+2?"]})


def crashes(**kw):
    raise KeyError("answer")


def prompts_only(**kw):
    return datasets.Dataset.from_dict({"prompt": ["Say something nice.", "Say hello."]})
