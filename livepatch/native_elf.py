"""ELF reading for the native backend: ``.dynamic`` and ``.dynsym`` as ``nm -D``
sees them, and the symbol versions an object needs (``.gnu.version_r``) or
defines (``.gnu.version_d``).

Nothing here maps an object into the process: pyelftools reads the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

__all__ = [
    "ElfInfo",
    "ElfSymbol",
    "NotSharedObject",
    "is_elf",
    "read_elf",
    "version_definitions",
]

_ELF_MAGIC: Final = b"\x7fELF"
_DF_1_NODELETE: Final = 0x8
_DF_1_NOW: Final = 0x1
_DF_1_PIE: Final = 0x08000000
_DF_BIND_NOW: Final = 0x8

# The ELF machine each CPU architecture Python reports must load.
_MACHINES: Final = {
    "x86_64": "EM_X86_64",
    "aarch64": "EM_AARCH64",
    "i686": "EM_386",
    "i386": "EM_386",
    "armv7l": "EM_ARM",
    "ppc64le": "EM_PPC64",
    "s390x": "EM_S390",
    "riscv64": "EM_RISCV",
}

# ---------------------------------------------------------------------------
# ELF: .dynsym as nm -D sees it
# ---------------------------------------------------------------------------


class NotSharedObject(ValueError):
    """The file is not an ELF shared object this process can load."""


@dataclass(frozen=True, slots=True)
class ElfSymbol:
    """One ``.dynsym`` entry.

    ``nm`` is the letter ``nm -D`` prints; ``letter`` is the table's (see
    :data:`NATIVE_LETTERS`). ``bind`` is ``GLOBAL``, ``WEAK``, ``UNIQUE`` or
    ``LOCAL``; ``type`` is ``FUNC``, ``OBJECT``, ``NOTYPE``, ``IFUNC``,
    ``TLS`` ...; ``section`` is the section name, or ``UND`` / ``ABS``.
    ``version`` is the symbol version an undefined symbol asks for
    (``GLIBC_2.2.5``) and ``version_library`` the library it asks it of
    (``libc.so.6``, from ``.gnu.version_r``). ``digest`` hashes the symbol's bytes in the file.
    ``lazy`` is true for an undefined symbol referenced only through the
    PLT (``JUMP_SLOT`` relocations): ``RTLD_LAZY`` binds it at its first
    call, not when the object is mapped.
    """

    name: str
    letter: str
    nm: str
    bind: str
    type: str
    section: str
    size: int
    value: int
    version: str | None
    digest: str
    lazy: bool = False
    version_library: str | None = None

    @property
    def defined(self) -> bool:
        """False for an undefined (``U``, ``w``) symbol."""
        return self.section != "UND"

    @property
    def is_function(self) -> bool:
        """A code symbol: a function or a GNU indirect function."""
        return self.type in ("FUNC", "IFUNC")


@dataclass(frozen=True, slots=True)
class ElfInfo:
    """What the dynamic linker reads from an object, before mapping it."""

    machine: str
    soname: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]
    nodelete: bool
    symbols: tuple[ElfSymbol, ...]
    #: Linked with ``-z now``: every symbol is bound when mapped, even lazily.
    bind_now: bool = False
    #: Every (library, version) the object needs (``.gnu.version_r``).
    needed_versions: tuple[tuple[str, str], ...] = ()

    def symbol(self, name: str) -> ElfSymbol | None:
        """The exported (non-local) symbol ``name``, defined ones first."""
        found = None
        for sym in self.symbols:
            if sym.name == name and sym.bind != "LOCAL":
                if sym.defined:
                    return sym
                found = found or sym
        return found

    @property
    def unique(self) -> tuple[str, ...]:
        """Names of the ``STB_GNU_UNIQUE`` symbols (they pin the object in memory)."""
        return tuple(s.name for s in self.symbols if s.bind == "UNIQUE" and s.defined)


def is_elf(data: bytes) -> bool:
    """True when ``data`` starts with the ELF magic number."""
    return data[:4] == _ELF_MAGIC


def _digest(data: bytes) -> str:
    # The same 12-hex-digit size as the Python tables' code hashes.
    return hashlib.blake2b(data, digest_size=6).hexdigest()


def _nm_letter(bind: str, stype: str, undefined: bool, section: Any, shndx: Any) -> str:
    """The letter ``nm`` prints, following binutils' ``bfd_decode_symclass``."""
    if shndx == "SHN_COMMON":
        return "C"
    if undefined:
        if bind == "WEAK":
            return "v" if stype == "OBJECT" else "w"
        return "U"
    if stype == "IFUNC":
        return "i"
    if bind == "WEAK":
        return "V" if stype == "OBJECT" else "W"
    if bind == "UNIQUE":
        return "u"
    if shndx == "SHN_ABS" or section is None:
        letter = "a"
    else:
        flags = section["sh_flags"]
        if flags & 0x4:  # SHF_EXECINSTR
            letter = "t"
        elif section["sh_type"] == "SHT_NOBITS":
            letter = "b"
        elif flags & 0x1:  # SHF_WRITE
            letter = "d"
        elif flags & 0x2:  # SHF_ALLOC
            letter = "r"
        else:
            letter = "n"
    return letter.upper() if bind == "GLOBAL" else letter


def _section_letter(section: Any) -> str:
    if section is None:
        return "D"
    flags = section["sh_flags"]
    if flags & 0x4:
        return "T"
    if section["sh_type"] == "SHT_NOBITS":
        return "B"
    return "D" if flags & 0x1 else "R"


def _fold(nm: str, section: Any) -> str:
    """nm's letter folded into :data:`NATIVE_LETTERS`: every weak flavour
    (``W V w v``) is ``W``, an indirect function (``i``) is ``T``, a unique
    symbol (``u``) takes its section's letter; the rest are nm's own."""
    if nm in "WVwv":
        return "W"
    if nm == "i":
        return "T"
    if nm == "u":
        return _section_letter(section)
    if nm in ("A", "a", "C"):
        return "D"
    return nm.upper()


def _versions_needed(elf: Any) -> dict[int, tuple[str, str]]:
    """Version index -> (library, version name) of the versions the object
    asks its libraries for (``.gnu.version_r``: ``libc.so.6``, ``GLIBC_2.2.5``)."""
    out: dict[int, tuple[str, str]] = {}
    section = elf.get_section_by_name(".gnu.version_r")
    if section is None:
        return out
    for verneed, auxiliaries in section.iter_versions():
        library = str(verneed.name)
        for aux in auxiliaries:
            out[int(aux["vna_other"])] = (library, str(aux.name))
    return out


_VER_FLG_WEAK: Final = 0x2


def _strong_needs(elf: Any) -> set[tuple[str, str]]:
    """The needed versions without ``VER_FLG_WEAK`` (a weak one that is
    missing is only a warning for glibc)."""
    out: set[tuple[str, str]] = set()
    section = elf.get_section_by_name(".gnu.version_r")
    if section is None:
        return out
    for verneed, auxiliaries in section.iter_versions():
        for aux in auxiliaries:
            flags = aux["vna_flags"]
            if not (isinstance(flags, int) and flags & _VER_FLG_WEAK):
                out.add((str(verneed.name), str(aux.name)))
    return out


def version_definitions(path: str | os.PathLike[str]) -> frozenset[str] | None:
    """The symbol versions a library defines (``.gnu.version_d``), its base
    version (the soname) included; ``None`` when it has no version
    definitions at all (an unversioned library satisfies no version need)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        section: Any = elf.get_section_by_name(".gnu.version_d")
        if section is None:
            return None
        names: set[str] = set()
        for _verdef, auxiliaries in section.iter_versions():
            for aux in auxiliaries:
                names.add(str(aux.name))
                break  # the first auxiliary names the version; the rest are parents
        return frozenset(names)


def read_elf(source: str | os.PathLike[str] | bytes, *, shown: str | None = None) -> ElfInfo:
    """Read an object's dynamic symbol table and dynamic section, from a
    file or from the object's bytes.

    Raises :class:`NotSharedObject` (a ``ValueError``) with a one-line reason
    for anything the dynamic linker would refuse: not ELF, not a shared
    object, built for another machine. ``shown`` is the name to give the
    object in messages (default: the file's own, or ``object``).
    """
    if isinstance(source, bytes):
        return _read_stream(io.BytesIO(source), shown or "object")
    name = os.fspath(source)
    with open(name, "rb") as stream:
        return _read_stream(stream, shown or Path(name).name)


def _read_stream(stream: BinaryIO, label: str) -> ElfInfo:
    from elftools.common.exceptions import ELFError  # imported when needed: ~40 ms
    from elftools.elf.elffile import ELFFile

    if stream.read(4) != _ELF_MAGIC:
        raise NotSharedObject(f"{label} is not an ELF file")
    stream.seek(0)
    try:
        elf = ELFFile(stream)
        return _read(elf, stream, label)
    except NotSharedObject:
        raise
    except (ELFError, Exception) as exc:  # noqa: BLE001 - pyelftools' own errors vary
        # A truncated or corrupt file: whatever pyelftools tripped on.
        raise NotSharedObject(f"{label} is a damaged ELF file: {exc}") from None


def _read(elf: Any, stream: BinaryIO, shown: str) -> ElfInfo:
    kind = elf.header["e_type"]
    if kind != "ET_DYN":
        what = {"ET_REL": "an object file (.o)", "ET_EXEC": "an executable"}.get(kind, kind)
        raise NotSharedObject(f"{shown} is {what}, not a shared object: link it with -shared")
    machine = str(elf.header["e_machine"])
    wanted = _MACHINES.get(os.uname().machine)
    if wanted is not None and machine != wanted:
        raise NotSharedObject(f"{shown} is built for {machine}, this process runs {wanted}")
    bits = 64 if sys.maxsize > 2**32 else 32
    if elf.elfclass != bits:
        raise NotSharedObject(f"{shown} is a {elf.elfclass}-bit object, this process is {bits}-bit")
    soname = None
    needed: list[str] = []
    runpath: list[str] = []
    nodelete = False
    bind_now = False
    lazy: set[int] = set()
    dynamic = elf.get_section_by_name(".dynamic")
    if dynamic is not None:
        for tag in dynamic.iter_tags():
            d_tag = tag.entry.d_tag
            if d_tag == "DT_NEEDED":
                needed.append(str(tag.needed))
            elif d_tag == "DT_SONAME":
                soname = str(tag.soname)
            elif d_tag in ("DT_RUNPATH", "DT_RPATH"):
                value = tag.runpath if d_tag == "DT_RUNPATH" else tag.rpath
                runpath.extend(p for p in str(value).split(":") if p)
            elif d_tag == "DT_FLAGS_1":
                if tag.entry.d_val & _DF_1_PIE:
                    # ET_DYN too, but glibc refuses to dlopen an executable.
                    raise NotSharedObject(
                        f"{shown} is a position-independent executable, not a shared object: "
                        "link it with -shared"
                    )
                nodelete = bool(tag.entry.d_val & _DF_1_NODELETE)
                bind_now = bind_now or bool(tag.entry.d_val & _DF_1_NOW)
            elif d_tag == "DT_FLAGS":
                bind_now = bind_now or bool(tag.entry.d_val & _DF_BIND_NOW)
            elif d_tag == "DT_BIND_NOW":
                bind_now = True
        lazy = _plt_only(elf, dynamic)
    symbols: list[ElfSymbol] = []
    versions = _versions_needed(elf)
    strong = _strong_needs(elf)
    dynsym = elf.get_section_by_name(".dynsym")
    if dynsym is not None:
        versym = elf.get_section_by_name(".gnu.version")
        for index, sym in enumerate(dynsym.iter_symbols()):
            if index == 0 or not sym.name:
                continue
            stype = sym["st_info"]["type"]
            if stype in ("STT_SECTION", "STT_FILE"):
                continue
            symbols.append(_symbol(elf, stream, sym, index, versym, versions, index in lazy))
    return ElfInfo(
        machine,
        soname,
        tuple(needed),
        tuple(runpath),
        nodelete,
        tuple(symbols),
        bind_now,
        tuple(n for n in dict.fromkeys(versions[k] for k in sorted(versions)) if n in strong),
    )


def _plt_only(elf: Any, dynamic: Any) -> set[int]:
    """Indexes of the symbols referenced only by PLT (``JUMP_SLOT``) relocations."""
    plt: set[int] = set()
    other: set[int] = set()
    try:
        tables = dynamic.get_relocation_tables()
    except Exception:  # noqa: BLE001 - unusual dynamic sections: no lazy symbols
        return plt
    for kind, table in tables.items():
        if kind == "RELR":
            # Packed relative relocations (-z pack-relative-relocs, glibc's own
            # libraries): addresses only, no symbol, so no r_info_sym.
            continue
        target = plt if kind == "JMPREL" else other
        for reloc in table.iter_relocations():
            target.add(int(reloc["r_info_sym"]))
    return plt - other


_BINDS: Final = {"STB_GLOBAL": "GLOBAL", "STB_WEAK": "WEAK", "STB_LOCAL": "LOCAL"}
_TYPES: Final = {
    "STT_NOTYPE": "NOTYPE",
    "STT_OBJECT": "OBJECT",
    "STT_FUNC": "FUNC",
    "STT_TLS": "TLS",
    "STT_COMMON": "COMMON",
}


def _symbol(
    elf: Any,
    stream: BinaryIO,
    sym: Any,
    index: int,
    versym: Any,
    versions: dict[int, tuple[str, str]],
    lazy: bool,
) -> ElfSymbol:
    # pyelftools names the GNU values by their range: STB_LOOS is
    # STB_GNU_UNIQUE and STT_LOOS is STT_GNU_IFUNC on Linux.
    raw_bind = sym["st_info"]["bind"]
    bind = "UNIQUE" if raw_bind == "STB_LOOS" else _BINDS.get(raw_bind, str(raw_bind))
    raw_type = sym["st_info"]["type"]
    stype = "IFUNC" if raw_type == "STT_LOOS" else _TYPES.get(raw_type, str(raw_type))
    shndx = sym["st_shndx"]
    undefined = shndx == "SHN_UNDEF"
    section = elf.get_section(shndx) if isinstance(shndx, int) else None
    size = int(sym["st_size"])
    value = int(sym["st_value"])
    version = None
    version_library = None
    if versym is not None and undefined:
        ndx = versym.get_symbol(index)["ndx"]
        if isinstance(ndx, int) and ndx in versions:
            version_library, version = versions[ndx]
    if undefined:
        digest = _digest(f"U {sym.name} {version or ''}".encode())
        section_name = "UND"
    elif section is None:
        digest = _digest(f"{shndx} {value} {size}".encode())
        section_name = "ABS"
    else:
        section_name = str(section.name)
        if section["sh_type"] == "SHT_NOBITS":
            digest = _digest(f"bss {size}".encode())
        else:
            # The bytes as they are in the file: code, or initial data.
            stream.seek(value - section["sh_addr"] + section["sh_offset"])
            digest = _digest(stream.read(size))
    nm = _nm_letter(bind, stype, undefined, section, shndx)
    return ElfSymbol(
        name=str(sym.name),
        letter=_fold(nm, section),
        nm=nm,
        bind=bind,
        type=stype,
        section=section_name,
        size=size,
        value=value,
        version=version,
        digest=digest,
        version_library=version_library,
        lazy=lazy and undefined,
    )
