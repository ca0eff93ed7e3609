"""SmolTalk (HuggingFaceTB/smoltalk, config `all`): general chat conversations, text only.

Schema (dataset card): messages: list of {content: str, role: str} (may start with a system message),
source: str. Any dataset with this `messages` column works (e.g. HuggingFaceTB/smol-smoltalk)."""
from nanoocr.data.tasks.common import HFTask


class SmolTalk(HFTask):
    name = "smoltalk"
    HUB_ID = "HuggingFaceTB/smoltalk"
    default_config = "all"

    def build(self, row, rid):
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        return {"id": rid, "source": self.name, "messages": messages, "image": None}
