#!/usr/bin/env python3
"""Independent check of a NeXus file written by operandod's export (OperandoTimeline.NeXusExport).

Reads the file with h5py only (and numpy) and checks what NeXus readers rely on:

- the file's `default` names an NXentry, the entry's `default` names an NXdata group;
- every group has an NX_class attribute naming a NeXus class (NX...);
- every NXdata group: `signal` names a dataset; `axes` names datasets (or ".") whose lengths
  match the signal's dimensions (by AXISNAME_indices when given, else by position);
  `auxiliary_signals` name datasets shaped like the signal; every per-row dataset of the group
  has as many rows as the signal;
- units: every numeric dataset in NXdata and NXpositioner groups and in /entry/events and
  /entry/clock has a `units` attribute, except the integer indices and codes `sequence`,
  `channel` and `kind` (dimensionless by definition); `*_ns` datasets are in "ns", `time` in "s";
- NXpositioner: `value` and `time` exist, have the same length, and are the same objects as the
  NXdata datasets their `target` attribute names (hard links);
- /entry/events: all columns have the same length and `time` never decreases;
- /entry/provenance (NXnote) is application/json and parses; metadata_json parses.

Prints a JSON summary on stdout (per NXdata: path, rows, signal, axes, and per dataset its
shape, dtype, units, first and last value; groups and their classes; events; positioners;
clock observations; the metadata tree) and exits 0; on any problem prints every problem on
stderr and exits 1. Python warnings are errors.

Usage: check-nexus.py FILE [--dump /path/to/dataset]...
  --dump adds the whole dataset's values to the summary under "dumps".
"""

import warnings

warnings.simplefilter("error")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

UNITLESS_INTEGERS = {"sequence", "channel", "kind"}
PER_ROW = {"time", "host_time_ns", "device_time_ns", "time_uncertainty_ns", "sequence"}


def text(value):
    """An attribute or string dataset value as str (h5py gives str, bytes or numpy scalars)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return text(value[()])
    if isinstance(value, np.generic):
        return text(value.item())
    return value


def texts(value):
    """A string or an array of strings attribute as a list of str."""
    if isinstance(value, (str, bytes, np.bytes_, np.str_)):
        return [text(value)]
    return [text(v) for v in value]


def plain(value):
    """A JSON-friendly Python value (NaN and infinities become None)."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()] if value.shape != () else plain(value[()])
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def read(dataset):
    """The whole dataset, strings decoded."""
    if h5py.check_string_dtype(dataset.dtype) is not None:
        return dataset.asstr()[()]
    return dataset[()]


class Checker:
    def __init__(self, f):
        self.f = f
        self.problems = []
        self.summary = {"groups": {}, "nxdata": {}, "positioners": {}, "clock": {}}

    def problem(self, where, message):
        self.problems.append(f"{where}: {message}")

    def nx_class(self, obj):
        value = obj.attrs.get("NX_class")
        return None if value is None else text(value)

    def run(self):
        f = self.f
        self.summary["attributes"] = {k: plain(text(v)) for k, v in f.attrs.items()}
        for name in ("default", "creator", "file_name", "file_time", "HDF5_Version"):
            if name not in f.attrs:
                self.problem("/", f"file attribute {name} missing")
        default = text(f.attrs.get("default", ""))
        if default not in f or self.nx_class(f[default]) != "NXentry":
            self.problem("/", f"@default={default!r} does not name an NXentry group")
            return
        entry = f[default]
        self.walk(f)
        self.check_entry(entry)
        for path, cls in self.summary["groups"].items():
            group = f[path]
            if cls == "NXdata":
                self.check_nxdata(path, group)
            elif cls == "NXpositioner":
                self.check_positioner(path, group)
        if "events" in entry:
            self.check_events(entry["events"])
        else:
            self.problem(entry.name, "no events collection")
        if "clock" in entry:
            for name, group in entry["clock"].items():
                self.check_units(group)
                self.summary["clock"][name] = {
                    "observations": int(group["host_after_ns"].shape[0]),
                    "model": text(group.attrs.get("model", "")),
                    "refit": json.loads(text(group["refit_json"][()])),
                }
        self.check_notes(entry)

    def walk(self, f):
        def visit(name, obj):
            if isinstance(obj, h5py.Group):
                cls = self.nx_class(obj)
                if cls is None:
                    self.problem("/" + name, "group without NX_class")
                elif not cls.startswith("NX"):
                    self.problem("/" + name, f"NX_class {cls!r} is not a NeXus class")
                self.summary["groups"]["/" + name] = cls

        f.visititems(visit)

    def check_entry(self, entry):
        info = {}
        for name in ("title", "entry_identifier", "start_time", "end_time", "program_name", "run_state", "start_reason", "stop_reason"):
            if name in entry:
                info[name] = text(read(entry[name]))
        for name in ("title", "entry_identifier", "start_time", "program_name", "run_state"):
            if name not in entry:
                self.problem(entry.name, f"{name} missing")
        if "program_name" in entry:
            info["program_version"] = text(entry["program_name"].attrs.get("version", ""))
        default = text(entry.attrs.get("default", ""))
        info["default"] = default
        if default and (default not in entry or self.nx_class(entry[default]) != "NXdata"):
            self.problem(entry.name, f"@default={default!r} does not name an NXdata group")
        self.summary["entry"] = info

    def check_units(self, group, exempt=UNITLESS_INTEGERS):
        for name, obj in group.items():
            if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "iuf":
                continue
            units = obj.attrs.get("units")
            if units is None:
                if not (obj.dtype.kind in "iu" and name in exempt):
                    self.problem(obj.name, "numeric dataset without units")
                continue
            units = text(units)
            if name.endswith("_ns") and units != "ns":
                self.problem(obj.name, f"units {units!r}, expected 'ns'")
            if name == "time" and units != "s":
                self.problem(obj.name, f"units {units!r}, expected 's'")

    def describe(self, dataset):
        value = read(dataset)
        info = {"shape": list(dataset.shape), "dtype": str(dataset.dtype)}
        if "units" in dataset.attrs:
            info["units"] = text(dataset.attrs["units"])
        if dataset.shape == ():
            info["value"] = plain(value)
        elif dataset.shape[0] > 0:
            info["first"] = plain(value[0])
            info["last"] = plain(value[-1])
        return info

    def check_nxdata(self, path, group):
        where = path
        signal = text(group.attrs.get("signal", ""))
        if not signal or signal not in group or not isinstance(group[signal], h5py.Dataset):
            self.problem(where, f"@signal={signal!r} does not name a dataset")
            return
        data = group[signal]
        shape = data.shape
        axes = texts(group.attrs["axes"]) if "axes" in group.attrs else []
        if not axes:
            self.problem(where, "no @axes")
        if len(axes) > len(shape):
            self.problem(where, f"@axes names {len(axes)} axes for a {len(shape)}-D signal")
        for position, axis in enumerate(axes):
            if axis == ".":
                continue
            if axis not in group:
                self.problem(where, f"axis {axis!r} is not in the group")
                continue
            indices = group.attrs.get(f"{axis}_indices", position)
            dims = [int(i) for i in np.atleast_1d(indices)]
            axis_shape = group[axis].shape
            expected = tuple(shape[d] for d in dims)
            if axis_shape != expected:
                self.problem(where, f"axis {axis!r} has shape {axis_shape}, the signal's dimensions {dims} are {expected}")
        auxiliary = texts(group.attrs["auxiliary_signals"]) if "auxiliary_signals" in group.attrs else []
        for name in auxiliary:
            if name not in group:
                self.problem(where, f"auxiliary signal {name!r} is not in the group")
            elif group[name].shape != shape:
                self.problem(where, f"auxiliary signal {name!r} has shape {group[name].shape}, the signal {shape}")
        rows = shape[0] if shape else 0
        for name in PER_ROW:
            if name in group and group[name].shape != (rows,):
                self.problem(where, f"{name} has shape {group[name].shape}, expected ({rows},)")
        for name in [signal] + auxiliary:
            if name in group and "units" not in group[name].attrs:
                self.problem(group[name].name, "signal without units")
        self.check_units(group)
        self.summary["nxdata"][path] = {
            "rows": int(rows),
            "signal": signal,
            "axes": axes,
            "auxiliary_signals": auxiliary,
            "stream": text(group.attrs.get("stream", "")),
            "datasets": {name: self.describe(obj) for name, obj in group.items() if isinstance(obj, h5py.Dataset)},
        }

    def check_positioner(self, path, group):
        for name in ("value", "time"):
            if name not in group:
                self.problem(path, f"no {name}")
                return
        value, time = group["value"], group["time"]
        if value.shape != time.shape:
            self.problem(path, f"value {value.shape} and time {time.shape} differ in length")
        links = {}
        for name in ("value", "time"):
            target = text(group[name].attrs.get("target", ""))
            if not target or target not in self.f:
                self.problem(group[name].name, f"@target={target!r} does not name a dataset")
            elif self.f[target].id != group[name].id:
                self.problem(group[name].name, f"is not the object {target} (not a hard link)")
            links[name] = target
        self.check_units(group)
        self.summary["positioners"][path] = {
            "rows": int(value.shape[0]),
            "units": text(value.attrs.get("units", "")),
            "value": links.get("value"),
            "time": links.get("time"),
        }

    def check_events(self, group):
        columns = {name: read(obj) for name, obj in group.items() if isinstance(obj, h5py.Dataset)}
        lengths = {name: len(v) for name, v in columns.items()}
        if len(set(lengths.values())) > 1:
            self.problem(group.name, f"columns of different lengths: {lengths}")
        for name in ("time", "host_time_ns", "device_time_ns", "time_uncertainty_ns", "kind", "source", "message", "values_json"):
            if name not in columns:
                self.problem(group.name, f"no {name}")
        self.check_units(group)
        time = columns.get("time", np.zeros(0))
        if len(time) > 1 and np.any(np.diff(time) < 0):
            self.problem(group.name, "events are not sorted by time")
        for i, values in enumerate(columns.get("values_json", [])):
            try:
                json.loads(text(values))
            except ValueError as e:
                self.problem(group.name, f"values_json[{i}] is not JSON: {e}")
        n = len(time)
        self.summary["events"] = {
            "count": n,
            "columns": sorted(columns),
            "rows": [{name: plain(text(v[i])) for name, v in columns.items()} for i in range(n)],
        }

    def check_notes(self, entry):
        if "provenance" not in entry:
            self.problem(entry.name, "no provenance")
        else:
            p = entry["provenance"]
            if self.nx_class(p) != "NXnote":
                self.problem(p.name, "is not an NXnote")
            if text(read(p["type"])) != "application/json":
                self.problem(p.name, "type is not application/json")
            try:
                self.summary["provenance"] = json.loads(text(read(p["data"])))
            except ValueError as e:
                self.problem(p.name, f"data is not JSON: {e}")
        if "metadata" in entry:
            m = entry["metadata"]
            try:
                self.summary["metadata_json"] = json.loads(text(read(m["metadata_json"])))
            except (KeyError, ValueError) as e:
                self.problem(m.name, f"metadata_json missing or not JSON: {e}")
            self.summary["metadata"] = self.tree(m)

    def tree(self, group):
        out = {}
        for name, obj in group.items():
            if isinstance(obj, h5py.Group):
                out[name] = self.tree(obj)
            else:
                out[name] = plain(read(obj))
        return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--dump", action="append", default=[], help="a dataset whose values go into the summary")
    args = parser.parse_args()
    try:
        f = h5py.File(args.file, "r")
    except (OSError, Warning) as e:
        print(f"check-nexus.py: cannot open {args.file}: {e}", file=sys.stderr)
        return 1
    with f:
        checker = Checker(f)
        try:
            checker.run()
            dumps = {}
            for path in args.dump:
                if path not in f:
                    checker.problem(path, "no such dataset to dump")
                else:
                    dumps[path] = plain(read(f[path]))
            checker.summary["dumps"] = dumps
        except Warning as w:
            checker.problem(args.file, f"warning while reading: {w}")
    if checker.problems:
        for p in checker.problems:
            print(f"check-nexus.py: {p}", file=sys.stderr)
        print(f"check-nexus.py: {len(checker.problems)} problem(s) in {args.file}", file=sys.stderr)
        return 1
    json.dump(checker.summary, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
