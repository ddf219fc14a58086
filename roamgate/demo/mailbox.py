"""Deterministic sample corporate mail: the same bytes on every run, so tests can compare them."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import html
import random
import struct
import textwrap
import zlib
from collections.abc import Callable
from email.header import Header
from email.message import EmailMessage, Message
from email.policy import SMTP, compat32
from email.utils import format_datetime, formataddr

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["JAPANESE_SUBJECTS", "OWNER", "sample_mailbox", "smime_signer_certificate_pem"]

Person = tuple[str, str]
Builder = Callable[[dt.datetime, str], bytes]

DOMAIN = "kestrel.example"
OWNER: Person = ("Erin Walsh", f"erin.walsh@{DOMAIN}")
_JST = dt.timezone(dt.timedelta(hours=9))
_COLLEAGUES = [
    ("Priya Raman", "Programme Manager"),
    ("Tom Becker", "Finance Controller"),
    ("Lucia Ferrante", "Head of Sales, EMEA"),
    ("Marcus Hale", "IT Operations"),
    ("Grace Okafor", "Firmware Lead"),
    ("Daniel Kim", "HR Business Partner"),
]
_PROJECTS = ["Falcon", "Harrier", "Osprey"]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
# One entry per blank-line separated block: the subject, then one paragraph per line.
# {project}, {weekday} and {n} (3..19) are filled once per message.
_TEMPLATES = """
Weekly status: {project}
Integration tests for {project} are green; what remains is the installer and the operator guide.
We are {n} working days from the release candidate. The main risk is the sensor board supplier.

Budget review for Q2
Finance needs the Q2 forecast for {project} by {weekday}, including contractor hours.
Last quarter we came in {n}% under plan, mostly because the field trials moved.

Travel request: customer visit in Lyon
I would like to visit the Lyon plant next month to review the {project} pilot with their team.
Flights and two nights come to about {n}50 EUR. Could you approve it in the travel tool?

{project} design review notes
Thanks for joining the review. We keep the bootloader and move the calibration tables to flash.
Open items: standby power budget and the EMC test slot. Both are on the tracker with owners.

Reminder: expense reports due Friday
March expense reports are due this Friday. Receipts over 25 EUR must be attached.
Reports submitted after the deadline will be paid with the April payroll.

Maintenance window on {weekday} evening
We will patch the mail and file servers on {weekday} between 19:00 and 21:00.
If you are travelling and need access during that window, reply and we will keep a gateway up.

Customer escalation: order KI-{n}071
Order 24-0{n}1 arrived with two units failing self-test; the customer needs replacements.
Can your team look at the returned units on {weekday}? I will update the customer daily.

Lunch and learn: working securely on the road
Join us on {weekday} at 12:30 in the Atlas room to learn how to read company mail while away.
We will cover one-time passcodes, the new mail gateway and lost laptops. Sandwiches provided.

Updated org chart
The new organisation chart is on the intranet: {project} now reports into Instruments.
Nothing changes day to day, but approvals above {n},000 EUR go through the division controller.

Invoice INV-{n}07 approved
Invoice INV-{n}07 from Meridian Components is approved for the next payment run.
Please book the goods receipt against the {project} purchase order so the match does not block.

Interview schedule for the firmware role
Interviews for the senior firmware role are on {weekday}, one hour each, in the small room.
Could you take the system design part? I will send the CVs and the question sheet tomorrow.

Minutes: {project} steering committee
The steering committee approved the revised {project} plan with {n} extra days of field tests.
Actions: engineering confirms test sites, sales briefs launch customers, finance releases funds.
"""
_REPLIES = [
    "Thanks, that works for me. Please go ahead.",
    "Approved. Let's look at the numbers again at the end of the month.",
    "I can take the system design part. Send me the CVs when you have them.",
    "Good progress. Can we add the EMC slot to Monday's agenda?",
    "I will be in Lyon that week, so let's move this to Thursday.",
]
# Multipart/alternative text+HTML: the subject, a heading, then one paragraph per line.
_NEWSLETTERS = """
Kestrel News: March edition
Kestrel News
The Tokyo office celebrated its tenth anniversary with an open day for customers and families.
The {project} pilot passed its first field trial at the Lyon plant.

IT: the new remote mail gateway
Reading mail on the road
From April, company mail outside the office goes through the new remote access gateway.
You need your password and a one-time code; large attachments download only when opened.

HR: benefits enrolment is open
Benefits enrolment
Enrolment for 2024 is open until 29 March, now with a cycle-to-work scheme.
Questions? Join the drop-in session on {weekday} afternoon.

Your weekly service desk summary
Service desk summary
{n}4 tickets were opened last week; most were about expiring VPN certificates.
Planned: mail server maintenance on {weekday} evening.
"""
# Real Japanese business mail from the Tokyo office: "sender|local part|subject", then the body.
_JAPANESE = """
佐藤 健|ken.sato|来週の定例会議の日程変更について
ウォルシュ様

お疲れ様です。東京オフィスの佐藤です。
来週の定例会議は、会議室の都合により
水曜日の午後2時から木曜日の午前10時に変更となりました。
ご都合が悪い場合は、今週中にお知らせください。

よろしくお願いいたします。
佐藤 健
%%
山本 美咲|misaki.yamamoto|センサー基板の見積もりについて
ウォルシュ様

いつもお世話になっております。山本です。
ご依頼いただいたセンサー基板の見積もりをお知らせします。
単価は1枚あたり4,800円、納期は発注後6週間です。
ご確認のほど、よろしくお願いいたします。

山本 美咲
%%
高橋 浩|hiroshi.takahashi|大阪出張の報告
ウォルシュ様

先週の大阪出張について報告いたします。
顧客3社を訪問し、新しい計測器のデモを行いました。
特に関西電機様から強い関心をいただき、
来月に試験導入の打ち合わせを行う予定です。
詳細は金曜日までに報告書で共有します。

高橋 浩
%%
情報システム部|it-tokyo|システムメンテナンスのお知らせ
各位

東京オフィスの社内システムについて、
下記の日程でメンテナンスを実施いたします。
日時：3月16日（土）午前9時から午後6時まで
作業中はメールとファイルサーバーをご利用いただけません。
ご不便をおかけしますが、ご理解とご協力をお願いいたします。

情報システム部
%%
佐藤 健|ken.sato|新製品発表会のご案内
ウォルシュ様

4月に開催する新製品発表会のご案内です。
会場は東京国際フォーラム、開始は午後1時30分の予定です。
海外チームの皆様にもぜひご参加いただきたく、
3月22日までに出欠をご返信いただけますと幸いです。

佐藤 健
%%
山本 美咲|misaki.yamamoto|経費精算の締め切りについて
皆様

今月の経費精算の締め切りは3月25日（月）です。
領収書の原本は経理部までお持ちください。
締め切りを過ぎた申請は来月の処理となりますので、ご注意ください。

経理部 山本
"""


def _entries(block: str) -> list[list[str]]:
    return [entry.split("\n") for entry in block.strip().split("\n\n")]


def _japanese_entries(block: str = _JAPANESE) -> list[tuple[str, str, str, str]]:
    """(sender name, local part, subject, body) for each message of a `name|local|subject` block."""
    out = []
    for entry in block.strip().split("\n%%\n"):
        first, _, body = entry.partition("\n")
        name, local, subject = first.split("|")
        out.append((name, local, subject, body + "\n"))
    return out


JAPANESE_SUBJECTS = tuple(subject for _, _, subject, _ in _japanese_entries())


def _address(name: str, local: str | None = None) -> Person:
    return (name, f"{local or name.lower().replace(' ', '.')}@{DOMAIN}")


def _fill(lines: list[str], rng: random.Random) -> list[str]:
    values = {"project": rng.choice(_PROJECTS), "weekday": rng.choice(_WEEKDAYS)}
    n = rng.randint(3, 19)
    return [line.format(n=n, **values) for line in lines]


def _wrap(*paragraphs: str) -> str:
    # Wrapped at 72 like a mail client, so plain parts stay 7bit instead of quoted-printable.
    return "\n\n".join(textwrap.fill(p, 72) for p in paragraphs) + "\n"


def _new(sender: Person, to: Person, subject: str, date: dt.datetime, mid: str) -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = formataddr(sender)
    msg["To"] = formataddr(to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = mid
    return msg


def _finish(msg: EmailMessage, mid: str) -> bytes:
    if msg.is_multipart():  # the email package would pick a random boundary otherwise
        msg.set_boundary("=_kestrel_" + hashlib.sha256(mid.encode()).hexdigest()[:16])
    for part in msg.iter_parts():  # EmailMessage parts carry their own MIME-Version: mail has one
        del part["MIME-Version"]
    return msg.as_bytes()


def _plain(rng: random.Random, template: int, reply: str | None = None) -> Builder:
    subject, *paragraphs = _fill(_entries(_TEMPLATES)[template], rng)
    name, title = rng.choice(_COLLEAGUES)
    sender, to = _address(name), OWNER
    if reply is None:
        body = _wrap("Hi Erin,", *paragraphs, f"Best regards,\n{name.split()[0]}")
        body += f"--\n{name}\n{title}, Kestrel Instruments\n"
    else:
        sender, to, subject = OWNER, sender, "Re: " + subject
        body = _wrap(f"Hi {name.split()[0]},", reply, "Erin")

    def build(date: dt.datetime, mid: str) -> bytes:
        msg = _new(sender, to, subject, date, mid)
        msg.set_content(body)
        return _finish(msg, mid)

    return build


def _newsletter(rng: random.Random, index: int) -> Builder:
    subject, heading, *paragraphs = _fill(_entries(_NEWSLETTERS)[index], rng)
    page = f"<html><body>\n<h1>{html.escape(heading)}</h1>\n"
    page += "".join(f"<p>{html.escape(p)}</p>\n" for p in paragraphs) + "</body></html>\n"

    def build(date: dt.datetime, mid: str) -> bytes:
        msg = _new(_address("Internal Communications", "news"), OWNER, subject, date, mid)
        msg.set_content(_wrap(heading, *paragraphs))
        msg.add_alternative(page, subtype="html")
        return _finish(msg, mid)

    return build


def _png(rng: random.Random, size: int = 24) -> bytes:
    """A small RGB PNG written by hand: a tinted diagonal stripe on white."""
    tint, white = bytes(rng.randint(40, 200) for _ in range(3)), b"\xff\xff\xff"
    rows = b"".join(
        b"\x00" + b"".join(tint if abs(x - y) < 4 else white for x in range(size))
        for y in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")
    )


def _csv(rng: random.Random) -> str:
    rows = ["region,january,february,march"]
    for region in ("EMEA", "Americas", "APAC", "Japan"):
        rows.append(",".join([region, *(str(rng.randint(80, 400)) for _ in range(3))]))
    return "\n".join(rows) + "\n"


def _pdf(rng: random.Random, size: int) -> bytes:
    """PDF-ish: a real PDF header and trailer around seeded noise, exactly `size` bytes."""
    head, tail = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", b"\n%%EOF\n"
    if size < len(head) + len(tail):
        raise ValueError(f"large_attachment_bytes must be at least {len(head) + len(tail)}")
    return head + rng.randbytes(size - len(head) - len(tail)) + tail


def _attachments(rng: random.Random, subject: str, files: dict[str, bytes | str]) -> Builder:
    name, _ = rng.choice(_COLLEAGUES)

    def build(date: dt.datetime, mid: str) -> bytes:
        msg = _new(_address(name), OWNER, subject, date, mid)
        msg.set_content(_wrap("Hi Erin,", "Please find the files attached.", name.split()[0]))
        for filename, data in files.items():
            kind = filename.rsplit(".", 1)[-1]
            if isinstance(data, str):
                msg.add_attachment(data, subtype=kind, filename=filename)
            else:
                maintype = "image" if kind == "png" else "application"
                msg.add_attachment(data, maintype=maintype, subtype=kind, filename=filename)
        return _finish(msg, mid)

    return build


def _japanese(index: int) -> Builder:
    name, local, subject, body = _japanese_entries()[index]

    def build(date: dt.datetime, mid: str) -> bytes:
        # compat32 keeps the ISO-2022-JP encoded-words: the new policy re-encodes them as UTF-8.
        msg = Message(policy=compat32)
        msg["From"] = formataddr((name, f"{local}@{DOMAIN}"), charset="iso-2022-jp")
        msg["To"] = formataddr(OWNER)
        msg["Subject"] = Header(subject, "iso-2022-jp", header_name="Subject").encode()
        msg["Date"] = format_datetime(date.astimezone(_JST))
        msg["Message-ID"] = mid
        msg["MIME-Version"] = "1.0"
        msg["Content-Type"] = "text/plain; charset=ISO-2022-JP"
        msg["Content-Transfer-Encoding"] = "7bit"
        msg.set_payload(body.encode("iso2022_jp").decode("ascii"))
        return msg.as_bytes(policy=compat32.clone(linesep="\r\n"))

    return build


def _prime(rng: random.Random, bits: int) -> int:
    """A probable prime (Miller-Rabin, 32 rounds) drawn from `rng`, top two bits set."""
    while True:
        n = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if any(n % p == 0 for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)):
            continue
        d, r = n - 1, 0
        while d % 2 == 0:
            d, r = d // 2, r + 1
        for _ in range(32):
            x = pow(rng.randrange(2, n - 1), d, n)
            for _ in range(r):
                if x in (1, n - 1):
                    break
                x = pow(x, 2, n)
            else:
                break  # a witness: n is composite
        else:
            return n


@functools.cache
def _smime_signer() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A public throw-away RSA key from seeded primes: RSA PKCS#1 v1.5 signing is deterministic."""
    rng = random.Random("roamgate smime demo key")  # noqa: S311 - a published demo key, by design
    e = 65537
    p, q = _prime(rng, 1024), _prime(rng, 1024)
    while p == q or (p - 1) % e == 0 or (q - 1) % e == 0:
        p, q = _prime(rng, 1024), _prime(rng, 1024)
    d = pow(e, -1, (p - 1) * (q - 1))
    crt = (rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q))
    key = rsa.RSAPrivateNumbers(p, q, d, *crt, rsa.RSAPublicNumbers(e, p * q)).private_key()
    email = f"security@{DOMAIN}"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Kestrel Security Team"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, email),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x5EC02024)
        .not_valid_before(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2034, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def smime_signer_certificate_pem() -> bytes:
    """The self-signed certificate that signed the S/MIME sample, to verify it with."""
    return _smime_signer()[0].public_bytes(serialization.Encoding.PEM)


def _signed(date: dt.datetime, mid: str) -> bytes:
    cert, key = _smime_signer()
    notice = _wrap(
        "All VPN and mail gateway certificates will be renewed on 18 March.",
        "No action is needed on company laptops. If a phone asks you to trust a new"
        " certificate, compare its fingerprint with the one on the intranet first.",
        "Kestrel Security Team",
    )
    content = EmailMessage(policy=SMTP)
    content.set_content(notice, charset="us-ascii", cte="7bit")
    del content["MIME-Version"]
    # Binary signs our CRLF bytes as they are; NoAttributes drops signingTime, the one varying input.
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    options.append(pkcs7.PKCS7Options.NoAttributes)
    signer = pkcs7.PKCS7SignatureBuilder().set_data(content.as_bytes())
    signature = signer.add_signer(cert, key, hashes.SHA256()).sign(
        serialization.Encoding.DER, options
    )
    sender = _address("Kestrel Security Team", "security")
    msg = _new(sender, OWNER, "Security notice: certificate renewal", date, mid)
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = 'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256'
    msg.attach(content)
    sig = EmailMessage(policy=SMTP)
    sig.set_content(signature, "application", "pkcs7-signature", filename="smime.p7s")
    msg.attach(sig)
    return _finish(msg, mid)


def _stamp(builders: list[Builder], folder: str, rng: random.Random) -> list[bytes]:
    """Build each message with a rising date and a Message-ID derived from folder and position."""
    date, out = dt.datetime(2024, 3, 4, 7, 40, tzinfo=dt.UTC), []
    for index, build in enumerate(builders):
        date += dt.timedelta(minutes=rng.randint(45, 720))
        digest = hashlib.sha256(f"{folder}/{index}".encode()).hexdigest()[:12]
        out.append(build(date, f"<{date:%Y%m%d%H%M}.{digest}@{DOMAIN}>"))
    return out


def sample_mailbox(*, large_attachment_bytes: int = 3_000_000) -> dict[str, list[bytes]]:
    """Folder name -> RFC 5322 messages with CRLF line endings, identical on every call.

    Even the S/MIME message repeats: its RSA key comes from seeded primes, PKCS#1 v1.5
    signatures are deterministic and the signature carries no signingTime attribute.
    """
    rng = random.Random(20240304)  # noqa: S311 - sample data, not secrets: it must repeat
    templates = len(_entries(_TEMPLATES))
    inbox: list[Builder] = [_plain(rng, i % templates) for i in range(20)]
    inbox += [_newsletter(rng, i) for i in range(len(_entries(_NEWSLETTERS)))]
    inbox += [_japanese(i) for i in range(len(JAPANESE_SUBJECTS))]
    png, table = _png(rng), _csv(rng)
    inbox += [
        _attachments(rng, "Q1 sales by region", {"q1-sales-by-region.csv": table}),
        _attachments(rng, "Logo proposal for the launch", {"logo-proposal.png": _png(rng)}),
        _attachments(rng, "Dashboard snapshot", {"dashboard.png": png, "dashboard.csv": table}),
        _attachments(
            rng,
            "Signed supply agreement",
            {"supply-agreement.pdf": _pdf(rng, large_attachment_bytes)},
        ),
        _signed,
    ]
    rng.shuffle(inbox)
    sent = [_plain(rng, i * 2, reply=reply) for i, reply in enumerate(_REPLIES)]
    projects = [_plain(rng, template) for template in (0, 3, 11, 0, 3, 11)]
    return {
        "INBOX": _stamp(inbox, "INBOX", rng),
        "Sent": _stamp(sent, "Sent", rng),
        "Projects": _stamp(projects, "Projects", rng),
    }
