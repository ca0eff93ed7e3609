"""LLaVA-CC3M-Pretrain-595K (liuhaotian/LLaVA-CC3M-Pretrain-595K): CC3M images with a short caption.

Files (repo): chat.json — a JSON array of {"id", "image": "GCC_train_000000000.jpg", "conversations":
[{"from": "human", "value": "...\\n<image>" or "<image>\\n..."}, {"from": "gpt", "value": caption}]};
images.zip — the images (flat). `images` may be that zip or a folder where it was extracted. The
`<image>` tag is moved to the front of the first human turn (DeepSeek-OCR's prompt shape)."""
import zipfile
from pathlib import Path

from nanoocr.data.records import IMAGE_TAG
from nanoocr.data.tasks.common import Task, load_rows, with_image_first

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


class LLaVACC3M(Task):
    name = "llava_cc3m"
    HUB_ID = "liuhaotian/LLaVA-CC3M-Pretrain-595K"

    def __init__(self, source, images=None, **kwargs):
        super().__init__(**kwargs)
        source = Path(source)
        chat = source / "chat.json" if source.is_dir() else source
        self.ds = load_rows(str(chat))
        images = Path(images) if images else chat.parent / "images.zip"
        if images.suffix == ".zip":
            self.zip = zipfile.ZipFile(images)
            # Index by base name: archives differ in whether members sit under a folder.
            self.members = {Path(n).name: n for n in self.zip.namelist()}
        else:
            self.zip, self.folder = None, images

    def num_examples(self):
        return len(self.ds)

    def read_image(self, name: str) -> bytes:
        name = Path(name).name  # names come from the data file: never let them walk out of the folder
        if self.zip is not None:
            if name not in self.members:
                raise FileNotFoundError(f"{name} not in the image archive")
            return self.zip.read(self.members[name])
        return (self.folder / name).read_bytes()

    def get_example(self, index):
        row = self.ds[index]
        rid = str(row.get("id") or f"{self.name}:{index}")
        try:
            image = self.read_image(row["image"])
        except (OSError, KeyError) as e:
            return {"id": rid, "source": self.name, "error": f"image not found: {e}"}
        messages = [{"role": ROLES.get(t["from"], t["from"]), "content": t["value"]} for t in row["conversations"]]
        if messages and IMAGE_TAG in messages[0]["content"]:
            messages[0]["content"] = with_image_first(messages[0]["content"])
        return {"id": rid, "source": self.name, "messages": messages, "image": image}
