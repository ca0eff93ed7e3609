"""olmOCR-mix-1025 (allenai/olmOCR-mix-1025): single-page PDFs with GPT-4.1 transcriptions (markdown,
HTML tables, \\( \\) / \\[ \\] math) in natural reading order; subsets 00_documents, 01_books,
02_loc_transcripts, 03_national_archives, splits train/eval.

The hub repo ships PDFs, not images, in two layouts; both are read here:
- parquet rows (hub id or local copy): `natural_text`, `pdf_relpath` = "pdf_tarballs/<chunk>.tar.gz:<member>",
  `page_number`, `primary_language`, `is_rotation_valid`, `rotation_correction`, `is_table`, `is_diagram`,
  `id`, `url`. The tarballs are looked up under `pdf_root` (the folder where the repo was downloaded;
  defaults to `source`, or the folder of `source` when it is a parquet file). With a hub id and no
  `pdf_root` there are no PDFs to read: `NeedsLocalFiles` says so before the table is loaded. Reading
  rows in parquet order keeps tar access sequential.
- the extracted layout that olmOCR's `prepare_olmocrmix` writes: `<name>.pdf` next to `<name>.md`, the
  markdown starting with a `---` front-matter block (primary_language, is_rotation_valid, ...).
Each PDF holds one page; it is rendered with pdftoppm at 144 dpi (`nanoocr.data.pdf.render_page`). Pages whose
`is_rotation_valid` is false are kept as rendered (the rotation fields are not applied).
(Parquet column names from olmOCR's data tooling and third-party converters; not confirmed on a real file.)"""
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

from nanoocr.data.pdf import PopplerError, render_page
from nanoocr.data.records import OCR_PROMPT, qa
from nanoocr.data.tasks.common import HFTask, NeedsLocalFiles, Task

NEEDS_PDFS = (
    "{what}: olmOCR-mix-1025's rows point at PDFs inside the repo's pdf_tarballs/*.tar.gz, which the hub table "
    "does not carry. Download the dataset repo (`huggingface-cli download allenai/olmOCR-mix-1025 "
    "--repo-type dataset --local-dir DIR`) and pass pdf_root=DIR (convert_to_mds: `--pdf-root DIR`), "
    "or convert the local copy with `task:OlmOCR:DIR`.")


def strip_front_matter(md: str) -> str:
    if md.startswith("---"):
        end = md.find("\n---", 3)
        if end != -1:
            return md[end + 4:].lstrip("\n")
    return md


def render_pdf_bytes(data: bytes) -> bytes:
    with tempfile.NamedTemporaryFile(suffix=".pdf") as f:
        f.write(data)
        f.flush()
        return render_page(f.name, 1)


@lru_cache(maxsize=4)
def _tar(path: str) -> tarfile.TarFile:
    return tarfile.open(path, "r:*")


class OlmOCR(HFTask):
    name = "olmocr"
    HUB_ID = "allenai/olmOCR-mix-1025"
    default_config = "00_documents"

    def __init__(self, source=None, split="train", config=None, pdf_root=None, **kwargs):
        local = Path(source) if source else None
        # The extracted layout is .md files WITH a sibling .pdf (a hub copy also holds a README.md).
        mds = sorted(local.rglob("*.md")) if local and local.is_dir() else []
        self.pairs = [md for md in mds if md.with_suffix(".pdf").is_file()]
        # Default: the local repo copy holding the parquet files and pdf_tarballs/ side by side.
        if pdf_root is None and local is not None and local.exists():
            pdf_root = local if local.is_dir() else local.parent
        self.pdf_root = Path(pdf_root) if pdf_root else None
        if not self.pairs:  # checked before the table is read: without the PDFs every row would be rejected
            if self.pdf_root is None:
                raise NeedsLocalFiles(NEEDS_PDFS.format(what=f"{source or self.HUB_ID} needs pdf_root"))
            if not self.pdf_root.is_dir():
                raise NeedsLocalFiles(NEEDS_PDFS.format(what=f"pdf_root {str(self.pdf_root)!r} is not a folder"))
        if self.pairs:  # extracted layout: no table to load
            Task.__init__(self, **kwargs)
            self.split = split
        else:
            super().__init__(source, split, config, **kwargs)

    def num_examples(self):
        return len(self.pairs) if self.pairs else len(self.ds)

    def get_example(self, index):
        if not self.pairs:
            return super().get_example(index)
        md = self.pairs[index]
        rid = md.with_suffix("").name
        try:
            text = strip_front_matter(md.read_text(encoding="utf-8"))
            return qa(OCR_PROMPT, text, render_pdf_bytes(md.with_suffix(".pdf").read_bytes()), rid, self.name)
        except (OSError, UnicodeDecodeError, PopplerError) as e:
            return {"id": rid, "source": self.name, "error": f"bad olmOCR page {md.name}: {e}"}

    def build(self, row, rid):
        rid = str(row.get("id") or rid)
        chunk, _, member = row["pdf_relpath"].partition(":")
        # Only members of tarballs inside pdf_root are read; the relpath comes from the data file.
        tar_path = (self.pdf_root / chunk).resolve()
        if not tar_path.is_relative_to(self.pdf_root.resolve()):
            raise ValueError(f"pdf_relpath escapes pdf_root: {row['pdf_relpath']}")
        tf = _tar(str(tar_path))
        f = tf.extractfile(member) or tf.extractfile("./" + member)
        try:
            image = render_pdf_bytes(f.read())
        except PopplerError as e:
            raise ValueError(f"PDF {member} failed to render: {e}")
        return qa(OCR_PROMPT, row["natural_text"], image, rid, self.name)
