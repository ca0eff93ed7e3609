"""CustomJSON: a local JSONL of conversations (nanochat's identity-conversation format).

Each line is either a JSON array of `{"role", "content"}` messages (nanochat) or an object with a
`messages` array (the unified format, text only). A line that is not valid UTF-8 or not valid JSON becomes
an error record naming the line, so a conversion reports it instead of stopping."""
import json
from pathlib import Path

from nanoocr.data.tasks.common import Task


class CustomJSON(Task):
    name = "customjson"

    def __init__(self, filepath, **kwargs):
        super().__init__(**kwargs)
        self.path = Path(filepath)
        self.lines = [line for line in self.path.read_bytes().splitlines() if line.strip()]

    def num_examples(self):
        return len(self.lines)

    def get_example(self, index):
        rid = f"{self.path.name}:{index + 1}"
        try:
            row = json.loads(self.lines[index].decode("utf-8"))
        except UnicodeDecodeError as e:
            return {"id": rid, "source": self.name, "error": f"entry {index + 1}: not valid UTF-8 at byte offset {e.start}"}
        except json.JSONDecodeError as e:
            return {"id": rid, "source": self.name, "error": f"entry {index + 1}: not valid JSON ({e.msg})"}
        messages = row.get("messages") if isinstance(row, dict) else row
        return {"id": rid, "source": self.name, "messages": messages, "image": None}
