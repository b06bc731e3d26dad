"""The terminal side of `nachbar shell`: a prompt_toolkit prompt with history and completion.

Everything a command does lives in `shell_commands`; this module only reads lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory

from nachbar.cli.context import CliContext
from nachbar.cli.shell_commands import Shell


class ShellCompleter(Completer):
    """Completes the word under the cursor with `Shell.completions`."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        word = document.get_word_before_cursor(WORD=True)
        for candidate in self.shell.completions(document.text_before_cursor):
            yield Completion(candidate, start_position=-len(word))


def interact(ctx: CliContext, shell: Shell, history: Path) -> int:
    """Read and run lines until exit, quit or Ctrl-D."""
    prompt: PromptSession[str] = PromptSession(
        history=FileHistory(str(history)),
        completer=ShellCompleter(shell),
        # Complete on Tab only: a store-name lookup per keystroke would be wasteful.
        complete_while_typing=False,
    )
    ctx.out.print(
        f"nachbar shell: ai at {ctx.ai_address}, db at {ctx.db_address}. "
        "`help` lists commands, Ctrl-D leaves.",
        highlight=False,
    )
    while True:
        try:
            line = prompt.prompt(shell.prompt)
        except KeyboardInterrupt:
            continue  # Ctrl-C clears the line, as in other shells
        except EOFError:
            return 0
        try:
            if not shell.execute(line):
                return 0
        except KeyboardInterrupt:
            ctx.out.print("interrupted")
