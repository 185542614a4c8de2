"""The Arduino library export: its layout, and its example sketch compiled for the
ATmega328P and run in simavr, where it must print over the UART the class the NumPy engine
computes.

There is no Arduino core here, so the sketch is compiled as C++ with avr-g++ against a
minimal stand-in ``Arduino.h`` (``Serial`` writing to UART0 by polling, ``F()``,
``memcpy_P``) and a ``main`` that calls ``setup()`` and ``loop()`` once, like the core's.
The library's C sources are compiled with avr-gcc as the Arduino IDE would, plus strict
warnings; they are also compiled for a Cortex-M4 to check the ARM branch of the popcount
choice.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile

import numpy as np
import pytest

from ebnn import engine
from ebnn.arduino import export_arduino
from ebnn.fold import fold
from ebnn.spec import ModelSpec
from ebnn.testing import calibrated_random_model

needs_avr = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("avr-gcc", "avr-g++", "simavr")),
    reason="needs avr-gcc, avr-g++ and simavr (make system)")

ARDUINO_H = r"""
/* Stand-in for the Arduino core's Arduino.h: just what the generated sketch uses. */
#ifndef ARDUINO_H
#define ARDUINO_H
#include <avr/io.h>
#include <avr/pgmspace.h>
#include <stdint.h>
#include <string.h>

class __FlashStringHelper;
#define F(s) (reinterpret_cast<const __FlashStringHelper *>(PSTR(s)))

class StandInSerial {
public:
    void begin(unsigned long) { UCSR0B = _BV(TXEN0); }
    void write(char c) { while (!(UCSR0A & _BV(UDRE0))) {} UDR0 = (uint8_t)c; }
    void print(const __FlashStringHelper *s) {
        const char *p = reinterpret_cast<const char *>(s);
        char c;
        while ((c = (char)pgm_read_byte(p++)) != 0) write(c);
    }
    void print(long v) {
        char buf[12];
        int n = 0;
        unsigned long u = v < 0 ? 0ul - (unsigned long)v : (unsigned long)v;
        if (v < 0) write('-');
        do { buf[n++] = (char)('0' + u % 10); u /= 10; } while (u);
        while (n) write(buf[--n]);
    }
    void println(long v) { print(v); write('\r'); write('\n'); }
};
extern StandInSerial Serial;

void setup();
void loop();
#endif
"""

MAIN_CPP = r"""
/* Stand-in for the core's main(): setup() once, loop() once, then sleep with interrupts
   off, which makes simavr exit. */
#include <Arduino.h>
#include <avr/interrupt.h>
#include <avr/sleep.h>
StandInSerial Serial;
int main()
{
    setup();
    loop();
    cli();
    sleep_mode();
    for (;;) {}
}
"""

MCU = ["-mmcu=atmega328p", "-DF_CPU=16000000L", "-DARDUINO=10819", "-DARDUINO_AVR_UNO",
       "-DARDUINO_ARCH_AVR", "-Os", "-ffunction-sections", "-fdata-sections"]
STRICT = ["-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Werror"]


def small_model(name: str = "tiny digits"):
    spec = ModelSpec.from_dict({
        "name": name, "input_shape": [1, 8, 8], "classes": 10,
        "blocks": [{"type": "conv", "filters": 8, "kernel": 3, "padding": 1, "pool": 2},
                   {"type": "dense", "units": 16}, {"type": "output"}]})
    return fold(calibrated_random_model(spec, seed=3))


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stderr}"
    return proc


def test_library_layout_and_zip(tmp_path):
    model = small_model()
    lib = export_arduino(model, tmp_path, example_image=np.arange(64, dtype=np.uint8) * 3)
    assert lib == tmp_path / "tiny_digits"
    props = dict(line.split("=", 1) for line in
                 (lib / "library.properties").read_text().splitlines())
    assert props["name"] == "tiny_digits" and props["includes"] == "tiny_digits_model.h"
    assert props["architectures"] == "*" and props["version"]
    assert {"sentence", "paragraph", "category", "author", "maintainer"} <= set(props)
    files = {p.relative_to(lib).as_posix() for p in lib.rglob("*") if p.is_file()}
    assert files == {"library.properties", "src/tiny_digits_model.c",
                     "src/tiny_digits_model.h", "src/ebnn_runtime.h", "src/ebnn_popcount.h",
                     "examples/classify/classify.ino", "examples/classify/example_image.h"}
    with zipfile.ZipFile(tmp_path / "tiny_digits.zip") as zf:
        assert sorted(zf.namelist()) == sorted(f"tiny_digits/{f}" for f in files)
        assert zf.read("tiny_digits/library.properties") == \
            (lib / "library.properties").read_bytes()
    # the image is in HWC order and the expected class is the engine's
    image = (lib / "examples/classify/example_image.h").read_text()
    expected = int(engine.predict(model, (np.arange(64, dtype=np.uint8) * 3).reshape(
        1, 1, 8, 8))[0])
    assert f"#define EXAMPLE_EXPECTED_CLASS {expected}\n" in image
    assert "PROGMEM" in image and "0, 3, 6, 9," in image
    # 8-bit words for the Uno; the popcount choice sits before the word size
    src = (lib / "src/tiny_digits_model.c").read_text()
    assert src.index("#define EBNN_POPCOUNT_BYTE_TABLE") < src.index("#define EBNN_WORD_BITS 8")
    # re-export replaces the folder and needs no zip
    (lib / "stale.txt").write_text("old")
    export_arduino(model, tmp_path, zip_file=False)
    assert not (lib / "stale.txt").exists()
    with pytest.raises(ValueError, match="63 values"):
        export_arduino(model, tmp_path / "bad", example_image=np.zeros(63, np.uint8))


@needs_avr
@pytest.mark.parametrize("index", [0, 1])
def test_sketch_runs_in_simavr_and_prints_the_engines_class(tmp_path, mnist_dir, index):
    """The real thing: an MNIST-shaped model, an official test image, the sketch compiled
    for the Uno and run in simavr, the class read back from the UART."""
    from ebnn.data import load_dataset

    spec = ModelSpec.from_dict({
        "name": "mnist-small", "input_shape": [1, 28, 28], "classes": 10,
        "blocks": [{"type": "conv", "filters": 8, "kernel": 3, "padding": 1, "pool": 2},
                   {"type": "conv", "filters": 8, "kernel": 3, "padding": 1, "pool": 2},
                   {"type": "output"}]})
    model = fold(calibrated_random_model(spec, seed=index))
    test = load_dataset("mnist", "test", mnist_dir)
    image = test.x[index]
    expected = int(engine.predict(model, image[None])[0])
    lib = export_arduino(model, tmp_path / "libs", example_image=image, zip_file=False)

    stand_in = tmp_path / "core"
    stand_in.mkdir()
    (stand_in / "Arduino.h").write_text(ARDUINO_H)
    (stand_in / "main.cpp").write_text(MAIN_CPP)
    sketch = lib / "examples" / "classify"
    objs = []
    for c_file in sorted((lib / "src").glob("*.c")):  # the library, as C, strictly
        obj = tmp_path / (c_file.stem + ".o")
        _run(["avr-gcc", "-std=gnu11", *MCU, *STRICT, f"-I{lib / 'src'}", "-c", str(c_file),
              "-o", str(obj)])
        objs.append(obj)
    for cpp, name in ((sketch / "classify.ino", "sketch.o"), (stand_in / "main.cpp", "main.o")):
        _run(["avr-g++", "-x", "c++", "-std=gnu++11", "-fno-exceptions",
              "-fno-threadsafe-statics", *MCU, "-Wall", "-Wextra", f"-I{stand_in}",
              f"-I{lib / 'src'}", f"-I{sketch}", "-c", str(cpp), "-o", str(tmp_path / name)])
        objs.append(tmp_path / name)
    elf = tmp_path / "classify.elf"
    _run(["avr-gcc", *MCU, "-Wl,--gc-sections", *map(str, objs), "-o", str(elf)])
    size = _run(["avr-size", "-A", str(elf)]).stdout
    assert int(size.split(".text")[1].split()[0]) < 32 * 1024

    proc = subprocess.run(["simavr", "-m", "atmega328p", "-f", "16000000", str(elf)],
                          capture_output=True, text=True, errors="replace", timeout=120)
    uart = proc.stderr.replace("\x1b[32m", "").replace("\x1b[0m", "")
    printed = re.findall(r"(class|expected) (\d+)\.\.", uart)  # \r\n shows as ".."
    assert printed == [("class", str(expected)), ("expected", str(expected))], uart


def test_library_compiles_for_arm(tmp_path):
    """On ARM boards the popcount block picks SWAR; the library compiles warning-free."""
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("needs arm-none-eabi-gcc")
    lib = export_arduino(small_model(), tmp_path, zip_file=False, target="cortex-m4")
    src = lib / "src" / "tiny_digits_model.c"
    assert "#define EBNN_WORD_BITS 32" in src.read_text()
    out = _run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-Os", "-std=gnu11",
                *STRICT, "-E", "-dM", f"-I{lib / 'src'}", str(src)]).stdout
    assert "#define EBNN_POPCOUNT_SWAR" in out and "EBNN_POPCOUNT_BYTE_TABLE" not in out
    _run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-Os", "-std=gnu11", *STRICT,
          f"-I{lib / 'src'}", "-c", str(src), "-o", str(tmp_path / "m.o")])
