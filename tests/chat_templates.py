"""Chat templates in the style Qwen3 and SmolLM3 ship (written for these tests, exercising the
same Jinja the real ones use: namespace() across a reversed loop, str methods, reasoning
blocks, `enable_thinking`, strftime_now and SmolLM3's `{% generation %}` blocks)."""

# Qwen3: earlier turns' <think> blocks are dropped, the last answer after the last user turn
# keeps its reasoning, and enable_thinking=False pre-fills an empty <think></think>.
QWEN3_STYLE = """
{%- set ns = namespace(found=false, last_user=0) %}
{%- for message in messages[::-1] %}
    {%- if not ns.found and message.role == 'user' %}
        {%- set ns.found = true %}
        {%- set ns.last_user = messages|length - 1 - loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- if loop.first %}
            {{- '<|im_start|>system\\n' + message.content + '<|im_end|>\\n' }}
        {%- endif %}
    {%- elif message.role == 'user' %}
        {{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set answer = message.content %}
        {%- set thought = '' %}
        {%- if message.reasoning_content is string %}
            {%- set thought = message.reasoning_content %}
        {%- elif '</think>' in answer %}
            {%- set thought = answer.split('</think>')[0].split('<think>')[-1].strip('\\n') %}
            {%- set answer = answer.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_user and (loop.last or thought) %}
            {{- '<|im_start|>assistant\\n<think>\\n' + thought + '\\n</think>\\n\\n' + answer + '<|im_end|>\\n' }}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + answer + '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

# SmolLM3: a metadata system block (today's date, reasoning mode from enable_thinking or a
# /think or /no_think flag in the system prompt), assistant turns inside generation blocks.
SMOLLM3_STYLE = """
{%- if enable_thinking is not defined %}
    {%- set enable_thinking = true %}
{%- endif %}
{%- set mode = '/think' if enable_thinking else '/no_think' %}
{%- set custom = '' %}
{%- if messages[0].role == 'system' %}
    {%- set sys = messages[0].content %}
    {%- if '/no_think' in sys %}
        {%- set mode = '/no_think' %}
    {%- elif '/think' in sys %}
        {%- set mode = '/think' %}
    {%- endif %}
    {%- set custom = sys.replace('/no_think', '').replace('/think', '').rstrip() %}
{%- endif %}
{{- '<|im_start|>system\\n## Metadata\\n\\nToday Date: ' + strftime_now('%d %B %Y') + '\\nReasoning Mode: ' + mode + '\\n\\n' }}
{{- (custom or 'You are a helpful assistant.') + '\\n\\n<|im_end|>\\n' }}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {% generation %}
        {%- if mode == '/think' %}
            {{- '<|im_start|>assistant\\n' + message.content.lstrip('\\n') + '<|im_end|>\\n' }}
        {%- else %}
            {{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n' + message.content.lstrip('\\n') + '<|im_end|>\\n' }}
        {%- endif %}
        {% endgeneration %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' + ('' if mode == '/think' else '<think>\\n\\n</think>\\n') }}
{%- endif %}
"""

CHAT_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse. /no_think"}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
     {"role": "user", "content": "and 3+3?"},
     {"role": "assistant", "content": "6", "reasoning_content": "again"}],
    [{"role": "system", "content": "Answer in French. /think"}, {"role": "user", "content": "Bonjour"},
     {"role": "assistant", "content": "\nSalut !"}, {"role": "user", "content": "Multi\nline  😀"}],
]
