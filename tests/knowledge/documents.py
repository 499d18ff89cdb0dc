"""Documents the knowledge tests upload, generated here: PDFs written by hand (a few objects and
an xref table), Word documents by python-docx, and hostile variants of both."""

from __future__ import annotations

import io
import textwrap
import zipfile

import docx
from pypdf import PdfReader, PdfWriter

FILLER = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
    "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim",
    "ad", "minim", "veniam", "quis", "nostrud", "exercitation", "ullamco", "laboris", "nisi",
    "aliquip", "ex", "ea", "commodo", "consequat",
)  # fmt: skip


def paragraph(topic: str, words: int = 90, seed: int = 0) -> str:
    """About `words` words of filler with `topic` (a sentence) in the middle."""
    filler = [FILLER[(i * 7 + seed) % len(FILLER)] for i in range(words)]
    middle = words // 2
    return " ".join(filler[:middle]) + f". {topic}. " + " ".join(filler[middle:]) + "."


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf(pages: list[str]) -> bytes:
    """A PDF with one page per string (an empty string: a page without a text layer)."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, once the kids are known
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for text in pages:
        page_number = len(objects) + 1
        kids.append(f"{page_number} 0 R")
        if text:
            lines = textwrap.wrap(text, 90)
            ops = " ".join(f"({_escape(line)}) Tj T*" for line in lines)
            stream = f"BT /F1 10 Tf 14 TL 40 800 Td {ops} ET".encode()
        else:
            stream = b"0.5 g 40 40 200 200 re f"  # a drawing, no text
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_number + 1} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>".encode()
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def encrypted_pdf(pages: list[str], password: str = "s3cret") -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf(pages))))
    # RC4 needs no cryptography package; the parser sees an encrypted PDF all the same.
    writer.encrypt(user_password=password, owner_password="owner-" + password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def word_document(paragraphs: list[str]) -> bytes:
    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_bomb_docx(unpacked_mib: int = 200) -> bytes:
    """A .docx-shaped ZIP whose document part inflates to `unpacked_mib` MiB (a few hundred KiB
    on the wire)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        block = b"\0" * 2**20
        with z.open("word/document.xml", "w", force_zip64=True) as member:
            for _ in range(unpacked_mib):
                member.write(block)
    return out.getvalue()
