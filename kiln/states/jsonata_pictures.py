"""XPath F&O picture strings for JSONata's $formatInteger, $parseInteger, $fromMillis/$now
(with a picture and a timezone) and $toMillis (with a picture), as jsonata-js implements them.

    format_integer(2789, "w")                      # 'two thousand, seven hundred and eighty-nine'
    parse_integer("MCMLXXXIV", "I")                # 1984
    format_datetime(0, "[D1o] [MNn] [Y]", "+0100")  # '1st January 1970'
    parse_datetime("2024-03-05", "[Y]-[M]-[D]")    # milliseconds since the epoch
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

_FEW = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen"]
_ORDINALS = ["zeroth", "first", "second", "third", "fourth", "fifth", "sixth", "seventh",
             "eighth", "ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth",
             "fifteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth"]
_DECADES = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_MAGNITUDES = ["thousand", "million", "billion", "trillion"]
_ROMAN = [(1000, "m"), (900, "cm"), (500, "d"), (400, "cd"), (100, "c"), (90, "xc"), (50, "l"),
          (40, "xl"), (10, "x"), (9, "ix"), (5, "v"), (4, "iv"), (1, "i")]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DEFAULT_PICTURE = "[Y0001]-[M01]-[D01]T[H01]:[m01]:[s01].[f001][Z01:01t]"


class PictureError(ValueError):
    pass


# ---------------------------------------------------------------------- integers

def _words(n: int, ordinal: bool, prev: bool = False) -> str:
    if n <= 19:
        return (" and " if prev else "") + (_ORDINALS[n] if ordinal else _FEW[n])
    if n < 100:
        tens, rest = divmod(n, 10)
        word = _DECADES[tens - 2]
        if ordinal and rest == 0:
            word = word[:-1] + "ieth"
        return (" and " if prev else "") + word + ("-" + _words(rest, ordinal) if rest else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        out = (", " if prev else "") + _FEW[hundreds] + " hundred"
        return out + (_words(rest, ordinal, True) if rest else ("th" if ordinal else ""))
    mag = min((len(str(n)) - 1) // 3, len(_MAGNITUDES))
    mant, rest = divmod(n, 10 ** (mag * 3))
    out = (", " if prev else "") + _words(mant, False) + " " + _MAGNITUDES[mag - 1]
    return out + (_words(rest, ordinal, True) if rest else ("th" if ordinal else ""))


def _letters(n: int, upper: bool) -> str:
    out = ""
    while n > 0:
        n, rem = divmod(n - 1, 26)
        out = chr(ord("a") + rem) + out
    return out.upper() if upper else out


def _roman(n: int) -> str:
    out = ""
    for value, letters in _ROMAN:
        count, n = divmod(n, value)
        out += letters * count
    return out


def _suffix(n: int) -> str:
    if n % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _split_modifier(picture: str) -> tuple[str, bool]:
    primary, _, modifier = picture.partition(";")
    return primary, modifier.startswith("o")


def _decimal(n: int, primary: str, ordinal: bool) -> str:
    if not re.fullmatch(r"[#0-9\W_]+", primary) or not re.search(r"[0-9]", primary):
        raise PictureError(f"The picture string '{primary}' is not supported")
    digits = re.sub(r"[^#0-9]", "", primary)
    mandatory = sum(c.isdigit() for c in digits)
    text = str(abs(n)).rjust(mandatory, "0")
    # Grouping separators: where they appear counting from the right of the picture.
    separators = []
    position = 0
    for char in reversed(primary):
        if char in "#0123456789":
            position += 1
        else:
            separators.append((position, char))
    if separators:
        regular = len({p for p, _ in separators}) == len(separators) and all(
            p % separators[0][0] == 0 for p, _ in separators) and len(
            {c for _, c in separators}) == 1
        out = []
        for i, char in enumerate(reversed(text)):
            if i:
                if regular and i % separators[0][0] == 0:
                    out.append(separators[0][1])
                elif not regular:
                    out.extend(c for p, c in separators if p == i)
            out.append(char)
        text = "".join(reversed(out))
    text = ("-" if n < 0 else "") + text
    return text + (_suffix(abs(n)) if ordinal else "")


def format_integer(n: int, picture: str) -> str:
    primary, ordinal = _split_modifier(picture)
    if primary in ("w", "W", "Ww"):
        words = _words(abs(n), ordinal)
        words = ("-" if n < 0 else "") + words
        if primary == "W":
            return words.upper()
        if primary == "Ww":
            return re.sub(r"\b[a-z]", lambda m: m.group(0).upper(), words).replace(
                " And ", " and ")
        return words
    if primary in ("i", "I"):
        text = _roman(abs(n))
        return text.upper() if primary == "I" else text
    if primary in ("a", "A"):
        return _letters(n, primary == "A")
    return _decimal(n, primary, ordinal)


def _parse_words(text: str) -> int:
    total = current = 0
    ordinals = {w: i for i, w in enumerate(_ORDINALS)}
    values = {w: i for i, w in enumerate(_FEW)}
    tens = {w: 20 + 10 * i for i, w in enumerate(_DECADES)}
    tens.update({w[:-1] + "ieth": v for w, v in tens.items()})
    for word in re.split(r"[\s,\-]+", text.lower().strip()):
        if word in ("", "and"):
            continue
        if word.endswith("th") and word[:-2] in ("hundred", *_MAGNITUDES):
            word = word[:-2]
        if word in values or word in ordinals:
            current += values.get(word, ordinals.get(word, 0))
        elif word in tens:
            current += tens[word]
        elif word == "hundred":
            current *= 100
        elif word in _MAGNITUDES:
            total += current * 1000 ** (_MAGNITUDES.index(word) + 1)
            current = 0
        else:
            raise PictureError(f"Unable to parse '{text}' as a number in words")
    return total + current


def parse_integer(text: str, picture: str) -> int:
    primary, ordinal = _split_modifier(picture)
    if primary in ("w", "W", "Ww"):
        return _parse_words(text)
    if primary in ("i", "I"):
        value, rest = 0, text.lower()
        for number, letters in _ROMAN:
            while rest.startswith(letters):
                value += number
                rest = rest[len(letters):]
        if rest:
            raise PictureError(f"Unable to parse '{text}' as a roman numeral")
        return value
    if primary in ("a", "A"):
        value = 0
        for char in text.lower():
            if not "a" <= char <= "z":
                raise PictureError(f"Unable to parse '{text}' as a letter sequence")
            value = value * 26 + ord(char) - ord("a") + 1
        return value
    digits = re.sub(r"[^0-9\-]", "", text[:-2] if ordinal else text)
    if not re.fullmatch(r"-?[0-9]+", digits):
        raise PictureError(f"Unable to parse '{text}' with picture '{picture}'")
    return int(digits)


# ---------------------------------------------------------------------- date/time

def _offset(tz: str | None) -> timezone:
    if not tz:
        return UTC
    match = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", tz)
    if match is None:
        raise PictureError(f"The timezone '{tz}' is not of the form ±HHMM")
    minutes = int(match[2]) * 60 + int(match[3])
    return timezone(timedelta(minutes=-minutes if match[1] == "-" else minutes))


def _component(dt: datetime, spec: str) -> str:
    spec = re.sub(r"\s+", "", spec)
    name, presentation = spec[0], spec[1:]
    width = ""
    if "," in presentation:
        presentation, width = presentation.split(",", 1)
    # ",min-max" or ",width" (both bounds); '*' leaves a bound open
    max_text = width.split("-", 1)[1] if "-" in width else width
    max_width = None if max_text in ("", "*") else int(max_text)
    if name == "Z" or name == "z":
        return _zone(dt, name, presentation)
    if name == "P":
        text = "am" if dt.hour < 12 else "pm"
        return text.upper() if presentation.startswith("N") else text
    values = {
        "Y": dt.year, "M": dt.month, "D": dt.day, "d": dt.timetuple().tm_yday,
        "F": dt.isoweekday(), "H": dt.hour, "h": (dt.hour % 12) or 12, "m": dt.minute,
        "s": dt.second, "W": dt.isocalendar()[1], "X": dt.isocalendar()[0],
        "w": (dt.day + datetime(dt.year, dt.month, 1).weekday() - 1) // 7 + 1,
    }
    if name == "f":
        digits = len(presentation) if presentation and presentation.isdigit() else 3
        return f"{dt.microsecond:06d}"[:digits].ljust(digits, "0")
    if name not in values:
        raise PictureError(f"The date/time component '{name}' is not supported")
    value = values[name]
    default = {"Y": "1", "M": "1", "D": "1", "d": "1", "F": "n", "H": "1", "h": "1",
               "m": "01", "s": "01", "W": "1", "X": "1", "w": "1"}[name]
    presentation = presentation or default
    if presentation[0] in "Nn":
        names = _MONTHS if name == "M" else _DAYS if name == "F" else None
        if names is None:
            raise PictureError(f"Component '{name}' has no names")
        text = names[value - 1]
        if max_width is not None:
            text = text[:max_width]
        if presentation.startswith("Nn"):
            return text
        return text.upper() if presentation[0] == "N" else text.lower()
    if presentation.endswith("o"):  # [D1o]: an ordinal, where integers write ';o'
        presentation = presentation[:-1] + ";o"
    text = format_integer(value, presentation)
    if name == "Y" and max_width is not None and len(text) > max_width:
        text = text[-max_width:]
    return text


def _zone(dt: datetime, name: str, presentation: str) -> str:
    offset = dt.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    if presentation.endswith("t") and minutes == 0:
        return "Z"
    presentation = presentation.rstrip("t") or "01:01"
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    digits = re.sub(r"[^0-9]", "", presentation)
    separator = re.sub(r"[0-9]", "", presentation)
    if len(digits) <= 2:
        text = f"{hours:0{len(digits)}d}" + (f"{separator}{mins:02d}" if mins or separator
                                             else "")
    else:
        text = f"{hours:02d}{separator}{mins:02d}"
    return ("GMT" if name == "z" else "") + sign + text


def _parts(picture: str) -> list[tuple[bool, str]]:
    """A picture as (is_marker, text) pieces; '[[' and ']]' outside markers are literal."""
    parts: list[tuple[bool, str]] = []
    literal, i = "", 0
    while i < len(picture):
        if picture.startswith("[[", i) or picture.startswith("]]", i):
            literal += picture[i]
            i += 2
        elif picture[i] == "[":
            end = picture.find("]", i)
            if end < 0:
                raise PictureError(f"The picture string '{picture}' has an unclosed '['")
            if literal:
                parts.append((False, literal))
                literal = ""
            parts.append((True, picture[i + 1:end]))
            i = end + 1
        else:
            literal += picture[i]
            i += 1
    if literal:
        parts.append((False, literal))
    return parts


def format_datetime(millis: float, picture: str | None, tz: str | None) -> str:
    # Whole milliseconds from the epoch, without float rounding at large values.
    dt = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(millis))).astimezone(
        _offset(tz))
    return "".join(_component(dt, text) if marker else text
                   for marker, text in _parts(picture or DEFAULT_PICTURE))


def parse_datetime(text: str, picture: str) -> int:
    """Milliseconds for ``text`` read with ``picture`` (missing parts: start of the period)."""
    pattern, fields = "", []
    for marker, piece in _parts(picture):
        if not marker:
            pattern += re.escape(piece)
            continue
        spec = re.sub(r"\s+", "", piece)
        name, presentation = spec[0], spec[1:].split(",")[0]
        if name in "Zz":
            pattern += r"(Z|(?:GMT)?[+-]\d{1,2}:?\d{2}?)"
        elif name == "P":
            pattern += r"([aApP][mM])"
        elif presentation[:1] in ("N", "n"):
            pattern += r"([A-Za-z]+)"
        elif len(presentation) > 1 and presentation.isdigit():  # "0001": exactly 4 digits
            pattern += rf"(\d{{{len(presentation)}}})"
        else:
            pattern += r"(\d+)"
        fields.append((name, presentation))
    found = re.fullmatch(pattern, text.strip())
    if found is None:
        raise PictureError(f"Unable to parse '{text}' with picture '{picture}'")
    parts = {"Y": 1970, "M": 1, "D": 1, "H": 0, "m": 0, "s": 0, "f": 0}
    pm: bool | None = None
    offset = timedelta(0)
    day_of_year: int | None = None
    for (name, presentation), value in zip(fields, found.groups(), strict=True):
        if name in "Zz":
            zone = value.removeprefix("GMT")
            offset = timedelta(0) if zone == "Z" else _offset(
                zone if ":" in zone or len(zone) == 5 else zone[0] + zone[1:].rjust(2, "0")
                + "00").utcoffset(None) or timedelta(0)
        elif name == "P":
            pm = value.lower() == "pm"
        elif presentation[:1] in ("N", "n"):
            if name == "M":
                month = next((i for i, m in enumerate(_MONTHS)
                              if m.lower().startswith(value.lower())), None)
                if month is None:
                    raise PictureError(f"Unknown month name '{value}'")
                parts["M"] = month + 1
        elif name == "f":
            parts["f"] = int(value.ljust(3, "0")[:3])
        elif name == "d":
            day_of_year = int(value)
        elif name in ("h", "H"):
            parts["H"] = int(value)
        elif name in parts:
            parts[name] = int(value)
    if pm is not None:
        parts["H"] = parts["H"] % 12 + (12 if pm else 0)
    dt = datetime(parts["Y"], parts["M"], parts["D"], parts["H"], parts["m"], parts["s"],
                  parts["f"] * 1000, tzinfo=UTC)
    if day_of_year is not None:
        dt = dt.replace(month=1, day=1) + timedelta(days=day_of_year - 1)
    return round((dt - offset).timestamp() * 1000)
