#!/usr/bin/env python3
"""Render reference chat-template outputs for `src/chat.rs`.

The environment mirrors what Hugging Face transformers builds in
`apply_chat_template` (transformers/utils/chat_template_utils.py):
`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
extensions=[loopcontrols])`, a `tojson` filter that is plain `json.dumps`
(no HTML escaping, `ensure_ascii=False`), and the globals `raise_exception`
and `strftime_now`. Only `jinja2` is needed:

    /tmp/setup/venv/bin/python scripts/make-chat-fixtures.py

writes one `fixtures/chat/<template>.json` per template with the template
source, the special tokens and, per conversation, either the exact expected
text or the expected `raise_exception` message.
"""

import json
import os
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "chat")

# SmolLM2-135M-Instruct's `chat_template`, copied verbatim from
# models/smollm2-135m-hf-f32/tokenizer_config.json (checked below when the
# model is present). Note the real newlines (not `\\n` escapes) inside its
# Jinja string literals.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A multi-line ChatML template written without `-` whitespace control: its
# output is only right when trim_blocks and lstrip_blocks are both on.
CHATML = """{% for message in messages %}
    {% if loop.first and message['role'] != 'system' %}
<|im_start|>system
You are a helpful assistant.<|im_end|>
    {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

# Llama-3 style: bos_token, `| trim`, namespace, and raise_exception for a
# bad role order.
LLAMA3 = """{{- bos_token }}
{%- set ns = namespace(expect='user') %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- if not loop.first %}
            {{- raise_exception('System message must be first') }}
        {%- endif %}
    {%- elif message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('Unknown role: ' + message['role']) }}
    {%- else %}
        {%- if message['role'] != ns.expect %}
            {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
        {%- endif %}
        {%- set ns.expect = 'assistant' if ns.expect == 'user' else 'user' %}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Gemma style: the system message is folded into the first user turn via
# `messages[0]['role']` and `messages[1:]`, contents go through `.strip()`.
GEMMA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'].strip() + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if message['role'] == 'assistant' -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'].strip() -}}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\\n' }}
{%- endif -%}
"""

# Python string methods, dict iteration order and transformers' tojson.
PYCOMPAT = """{% for message in messages %}
{{ loop.index }}. {{ message.role.upper() }}{% if message.content.startswith('List') %} (list){% endif %}: {{ message.content.strip().replace('\\n', ' ').split(' ') | join('|') }}
{% for key, value in message.items() %}{{ key }}={{ value | length }};{% endfor %}

{{ message | tojson }}
{% if loop.last %}
{{ message['content'] | tojson(ensure_ascii=True) }}
{% endif %}
{% endfor %}
{{ messages[:2] | tojson(indent=2) }}
{{ {'b': 1, 'a': [1.5, true, none, "x<y>&'"], 'c': 0.0001, 'd': 0.00001, 'e': 1e20, 'f': -2, 'g': {}, 'h': []} | tojson(sort_keys=true) }}
{{ {'k': [1, {'z': 'w'}], 'j': []} | tojson(indent=1, separators=[',', ':']) }}
{% if add_generation_prompt %}{{ eos_token }}{% endif %}
"""

TEMPLATES = {
    "smollm2": (SMOLLM2, "<|im_start|>", "<|im_end|>"),
    "chatml": (CHATML, "<|im_start|>", "<|im_end|>"),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "gemma": (GEMMA, "<bos>", "<eos>"),
    "pycompat": (PYCOMPAT, "<s>", "</s>"),
}


def msg(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "single_user": [msg("user", "Hello!")],
    # The conversation behind fixtures/golden/smollm2-135m-instruct/chatml_chat.json.
    "system_user": [
        msg("system", "You are a concise assistant."),
        msg("user", "List three primary colors."),
    ],
    "multi_turn": [
        msg("system", "You are a concise assistant."),
        msg("user", "What is 2+2?"),
        msg("assistant", "4"),
        msg("user", "And  times 3?\nShow work."),
    ],
    "multi_turn_no_system": [
        msg("user", "  Hi there  \n"),
        msg("assistant", "Hello! How can I help?"),
        msg("user", "Say \"café\" in 日本語 ☕ <b>&amp;</b>"),
    ],
}

# Conversations that must fail, per template, with the raise_exception text.
ERROR_CONVERSATIONS = {
    "llama3": {
        "assistant_first": [msg("assistant", "Hi"), msg("user", "Hello")],
        "late_system": [msg("user", "Hi"), msg("system", "Be brief.")],
        "unknown_role": [msg("tool", "42")],
    },
    "gemma": {
        "user_twice": [msg("user", "Hi"), msg("user", "Hello?")],
    },
}


class RaisedException(Exception):
    pass


def raise_exception(message):
    # transformers raises jinja2.exceptions.TemplateError(message).
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers overrides Jinja's tojson: no HTML escaping, options exposed.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, source, bos, eos, messages, add_generation_prompt):
    template = env.from_string(source)
    return template.render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=eos,
    )


def main():
    cfg = os.path.join(ROOT, "models", "smollm2-135m-hf-f32", "tokenizer_config.json")
    if os.path.exists(cfg):
        with open(cfg, encoding="utf-8") as f:
            real = json.load(f)["chat_template"]
        if real != SMOLLM2:
            sys.exit("SMOLLM2 template differs from tokenizer_config.json")

    env = make_env()
    os.makedirs(OUT, exist_ok=True)
    for name, (source, bos, eos) in TEMPLATES.items():
        cases = []
        for conv_name, messages in CONVERSATIONS.items():
            for agp in (False, True):
                cases.append(
                    {
                        "name": f"{conv_name}{'_gen' if agp else ''}",
                        "messages": messages,
                        "add_generation_prompt": agp,
                        "expected": render(env, source, bos, eos, messages, agp),
                    }
                )
        for conv_name, messages in ERROR_CONVERSATIONS.get(name, {}).items():
            try:
                render(env, source, bos, eos, messages, True)
            except jinja2.exceptions.TemplateError as e:
                cases.append(
                    {
                        "name": conv_name,
                        "messages": messages,
                        "add_generation_prompt": True,
                        "error": str(e),
                    }
                )
            else:
                sys.exit(f"{name}/{conv_name}: expected an error")
        doc = {
            "name": name,
            "generator": f"scripts/make-chat-fixtures.py, jinja2 {jinja2.__version__}",
            "bos_token": bos,
            "eos_token": eos,
            "template": source,
            "cases": cases,
        }
        path = os.path.join(OUT, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=2)
            f.write("\n")
        print(f"wrote {os.path.relpath(path, ROOT)} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
