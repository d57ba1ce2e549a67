import Foundation
import OperandoCore
import OperandoIO
import OperandoStore

// MARK: - What an export wrote (NeXus and CSV)

/// What `NeXusExport.write` or `CSVExport.write` produced.
public struct ExportSummary: Sendable, Codable, Equatable {
    /// One data stream as exported.
    public struct Stream: Sendable, Codable, Equatable {
        /// The stream's name in the run (`pstat/ei`).
        public var name: String
        /// Where it went: its NXdata group (`/entry/pstat_ei`) or its CSV file (`pstat_ei.csv`).
        public var output: String
        /// Records read and rows written (a samples record may hold several rows; a frame is a row).
        public var records: Int
        public var rows: Int
    }

    /// The NeXus file, or the directory holding the CSV files.
    public var path: String
    public var streams: [Stream]
    /// Events written (every events stream, the daemon's included).
    public var events: Int
    /// Raw clock observations written (NeXus only; CSV leaves them to `clock.json` and the run).
    public var clockObservations: Int
    /// Bytes written: the NeXus file, or all CSV files together.
    public var bytes: Int
    /// Data and event records read from the segments (CRC-checked).
    public var recordsRead: Int
    /// Damaged regions the reader skipped: each is one record or a run of them that failed its CRC.
    public var damagedRegions: Int
    /// Bytes at segment ends that did not form a whole record (a torn tail: a run still being
    /// written, or a crash); not exported.
    public var tornTailBytes: Int
    /// Records with a good CRC whose payload does not fit their stream (a frame of the wrong
    /// size, an event that is not JSON, a clock observation that does not decode): skipped.
    public var malformedRecords: Int
}

/// An export that could not be done: what, where, and what to do.
public struct ExportError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

// MARK: - NeXus/HDF5

/// Writes a run as one NeXus/HDF5 file (opens in h5py, silx, nexusformat, NeXus readers):
///
/// ```
/// /                      @default="entry" @creator="operandod" @file_name @file_time @HDF5_Version
/// /entry                 NXentry  @default=<first samples stream>
///   title entry_identifier start_time end_time duration program_name(@version) run_state
///   start_reason stop_reason
///   <device>_<stream>    NXdata per data stream, one row per sample (or frame):
///     time [s since the run's start anchor, the axis]  host_time_ns  device_time_ns
///     time_uncertainty_ns  sequence
///     samples: one dataset per field (@units); @signal=first field @axes="time" @auxiliary_signals
///     frames:  data [frames × elements] (@units), channel; @signal="data" @axes=["time","channel"]
///   instrument           NXinstrument: per device an NXcollection (driver, identity, clock) and
///                        an NXpositioner per length-valued field (value, time: hard links)
///   events               NXcollection: every event of the run, sorted by time
///   clock                NXcollection: per device its raw observations and the refit (JSON)
///   metadata             NXcollection mirroring the run's metadata, and metadata_json
///   recording            NXcollection: per stream produced/written/dropped/bytes, durability,
///                        disk interruptions and what recovery did, when there were any
///   provenance           NXnote (application/json): configuration, versions, devices, host
/// ```
///
/// Every time is the record's time on the common timeline (its device time mapped through the
/// device's refitted clock, or its host stamp), with the uncertainty of that mapping. Rows after
/// the first of a multi-row samples record are spaced by the stream's nominal period.
///
/// The segments are read once, in order; each stream's rows are buffered up to a few thousand
/// rows (or a few MiB of frames) and appended to chunked, compressed (deflate 4 + shuffle)
/// datasets, so memory stays bounded however long the run. Only the run's events are held until
/// the end (they are sorted by time). The file is written as `path.partial` and renamed to `path`
/// once complete and synced: a failed export leaves no file that looks complete.
public enum NeXusExport {
    /// Exports `reader`'s run to `path`. `clocks` defaults to a refit of the run's stored clock
    /// observations (which reads the segments once more); `progress` gets the fraction done.
    @discardableResult
    public static func write(_ reader: RunReader, clocks: RunClocks? = nil, to path: String, progress: ((Double) -> Void)? = nil) throws -> ExportSummary {
        try ExportFiles.checkParentDirectory(of: path)
        let plan = ExportPlan(reader, clocks: try clocks ?? RunClocks.fit(reader))
        let partial = path + ".partial"
        do {
            var summary = try NeXusWriter.export(plan, to: partial, finalName: path, progress: progress)
            try ExportFiles.syncAndRename(partial, to: path)
            summary.path = path
            summary.bytes = ExportFiles.size(path)
            progress?(1)
            return summary
        } catch {
            unlink(partial)
            throw error
        }
    }
}

/// One export to one HDF5 file; every HDF5 object is closed before `export` returns or throws.
final class NeXusWriter {
    /// Rows of 1-D columns per chunk and per append: 128 KiB of 8-byte values.
    static let columnChunkRows = 16384
    /// The most frame bytes buffered per stream before they are appended.
    static let frameBatchBytes = 4 << 20

    let plan: ExportPlan
    let file: HDF5File
    let entry: HDF5Group
    var data: [NXDataOutput] = []
    var clockOutputs: [UInt32: NXClockOutput] = [:]
    var events: [ExportEvent] = []
    var groups: [HDF5Group] = []
    var malformed = 0

    static func export(_ plan: ExportPlan, to partial: String, finalName: String, progress: ((Double) -> Void)?) throws -> ExportSummary {
        let writer = try NeXusWriter(plan, partial: partial, finalName: finalName)
        return try writer.run(progress: progress)
    }

    private init(_ plan: ExportPlan, partial: String, finalName: String) throws {
        self.plan = plan
        do {
            file = try HDF5File.create(partial)
        } catch {
            throw ExportError("cannot create \(partial): \(error)")
        }
        entry = try file.createGroup("entry", nxClass: "NXentry")
        try writeHeader(finalName: finalName)
        for stream in plan.streams { data.append(try NXDataOutput(stream, in: entry, runStart: plan.manifest.startedAt)) }
        if let first = plan.streams.first(where: { $0.descriptor.kind == .samples }) ?? plan.streams.first {
            try entry.setAttribute("default", first.name)
        }
        try writeInstrument()
        if !plan.clockStreams.isEmpty {
            let clock = try entry.createGroup("clock", nxClass: "NXcollection")
            groups.append(clock)
            try clock.setAttribute("description", "raw clock observations of each device (as stored in the run) and their refit (refit_json)")
            var names = UniqueNames()
            for s in plan.clockStreams {
                let name = names.claim(ExportPlan.nexusName(s.device))
                clockOutputs[s.id] = try NXClockOutput(device: s.device, name: name, in: clock, fit: plan.clocks.device(s.device))
            }
        }
    }

    /// File attributes and the entry's own fields.
    private func writeHeader(finalName: String) throws {
        let m = plan.manifest
        try file.setAttribute("default", "entry")
        try file.setAttribute("creator", "operandod")
        try file.setAttribute("file_name", finalName)
        try file.setAttribute("file_time", ExportFiles.iso8601Now())
        try file.setAttribute("HDF5_Version", HDF5.libraryVersion)
        try entry.writeScalar("title", m.name).close()
        try entry.writeScalar("entry_identifier", m.id).close()
        try entry.writeScalar("start_time", m.startedAt).close()
        if let stopped = m.stoppedAt { try entry.writeScalar("end_time", stopped).close() }
        if let stop = m.stopAnchor {
            let d = try entry.writeScalar("duration", stop.host.seconds(since: m.startAnchor.host))
            try d.setAttribute("units", "s")
            try d.close()
        }
        let program = try entry.writeScalar("program_name", "operandod")
        try program.setAttribute("version", m.provenance.daemonVersion)
        try program.close()
        try entry.writeScalar("run_state", m.state.rawValue).close()
        try entry.writeScalar("start_reason", m.startReason).close()
        if let reason = m.stopReason { try entry.writeScalar("stop_reason", reason).close() }
    }

    /// `/entry/instrument`: each device's driver, identity and clock; a positioner per length field.
    private func writeInstrument() throws {
        let instrument = try entry.createGroup("instrument", nxClass: "NXinstrument")
        defer { try? instrument.close() }
        var names = UniqueNames()
        let summaries = Dictionary(plan.clocks.summary.map { ($0.device, $0) }, uniquingKeysWith: { a, _ in a })
        for d in plan.manifest.provenance.devices {
            let g = try instrument.createGroup(names.claim(ExportPlan.nexusName(d.name)), nxClass: "NXcollection")
            try g.writeScalar("name", d.name).close()
            try g.writeScalar("driver", d.driver).close()
            try g.writeScalar("driver_version", d.driverVersion).close()
            try g.writeScalar("transport", d.transport).close()
            if let id = d.identity {
                try g.writeScalar("model", id.model).close()
                try g.writeScalar("serial_number", id.serialNumber).close()
                try g.writeScalar("firmware", id.firmware).close()
                try g.writeScalar("protocol", id.protocolVersion).close()
            }
            if let r = d.clockResolutionNs { try Self.scalar(g, "clock_resolution_ns", r, units: "ns") }
            if let l = d.oneWayLatencyMaxNs { try Self.scalar(g, "one_way_latency_max_ns", l, units: "ns") }
            let c = try g.createGroup("clock", nxClass: "NXcollection")
            let fit = plan.clocks.device(d.name)
            try c.writeScalar("model", (fit?.model ?? .none).rawValue).close()
            try c.writeScalar("observations", Int64(fit?.observations ?? 0)).close()
            try c.writeScalar("segments", Int64(fit?.segments.count ?? 0)).close()
            if let s = summaries[d.name] {
                try c.writeScalar("resets", Int64(s.resets)).close()
                if let u = s.uncertaintyMedianNs { try Self.scalar(c, "uncertainty_median_ns", u, units: "ns") }
                if let u = s.uncertaintyMaxNs { try Self.scalar(c, "uncertainty_max_ns", u, units: "ns") }
            }
            if let ppm = fit?.driftPPM { try Self.scalar(c, "drift_ppm", ppm, units: "ppm") }
            if let u = fit?.hostStampUncertaintyNs { try Self.scalar(c, "host_stamp_uncertainty_ns", u, units: "ns") }
            try c.close()
            try g.close()
        }
        // Positioners: every length-valued field of a samples stream (a stage's position).
        for output in data where output.stream.descriptor.kind == .samples {
            for (k, unit) in output.stream.columnUnits.enumerated() where ExportPlan.lengthUnits.contains(unit) {
                let field = output.stream.columnNames[k]
                let p = try instrument.createGroup(names.claim(ExportPlan.nexusName("\(output.stream.descriptor.device)_\(field)")), nxClass: "NXpositioner")
                try p.writeScalar("name", output.stream.descriptor.fields.indices.contains(k) ? output.stream.descriptor.fields[k].name : field).close()
                try p.link(output.columns[k], as: "value")
                try p.link(output.time, as: "time")
                try p.close()
                // NeXus marks a linked field with its original path.
                try output.columns[k].setAttribute("target", output.columns[k].path)
                try output.time.setAttribute("target", output.time.path)
            }
        }
    }

    static func scalar<T: HDF5Scalar>(_ g: HDF5Container, _ name: String, _ value: T, units: String) throws {
        let d = try g.writeScalar(name, value)
        try d.setAttribute("units", units)
        try d.close()
    }

    /// The single pass over the segments, then everything that needs the whole run.
    private func run(progress: ((Double) -> Void)?) throws -> ExportSummary {
        var decoder = EventDecoder()
        let scan = try plan.reader.records(progress: progress.map { p in { p($0 * 0.99) } }) { r in
            switch plan.roles[r.header.streamID] {
            case .data(let i)?:
                let output = data[i]
                guard let rows = output.stream.rows(in: r) else {
                    malformed += 1
                    return
                }
                if rows.malformed { malformed += 1 }
                try output.add(r, rows: rows.count, at: output.stream.place(r.header), runStartNs: plan.runStartNs)
            case .events(let s)?:
                if let e = decoder.decode(r, stream: s, clock: plan.clocks.device(s.device)) { events.append(e) } else { malformed += 1 }
            case .clock?:
                guard let o = ClockObservation(payload: r.payload, deviceTime: r.header.deviceTime), let output = clockOutputs[r.header.streamID] else {
                    malformed += 1
                    return
                }
                try output.add(o)
            case nil:
                break
            }
        }
        for output in data { try output.finish() }
        var observations = 0
        for output in clockOutputs.values {
            observations += output.observations
            try output.finish()
        }
        let sortedEvents = ExportEvent.sorted(events)
        try writeEvents(sortedEvents)
        try writeMetadata()
        try writeRecording()
        try writeProvenance()
        for g in groups { try g.close() }
        try entry.close()
        try file.close()
        return ExportSummary(
            path: file.fileName, streams: data.map { .init(name: $0.stream.descriptor.name, output: $0.group.path, records: $0.records, rows: $0.rows) },
            events: sortedEvents.count, clockObservations: observations, bytes: 0, recordsRead: scan.records, damagedRegions: scan.damagedRegions,
            tornTailBytes: scan.tornTailBytes, malformedRecords: malformed)
    }

    private func writeEvents(_ events: [ExportEvent]) throws {
        let g = try entry.createGroup("events", nxClass: "NXcollection")
        try g.setAttribute(
            "description", "every event of the run (stimulus, marker, state_change, gap, alarm) from every device and the daemon, sorted by time")
        try NXColumns.writeTimes(
            in: g, time: events.map { Double($0.hostNs &- plan.runStartNs) / 1e9 }, host: events.map(\.hostNs),
            device: events.map { $0.deviceNs ?? RecordLayout.noDeviceTime }, uncertainty: events.map { $0.uncertaintyNs ?? -1 },
            runStart: plan.manifest.startedAt)
        let end = try g.writeDataset("end_host_time_ns", events.map { $0.endNs ?? RecordLayout.noDeviceTime })
        try end.setAttribute("units", "ns")
        try end.setAttribute("description", "for gaps: where the gap ends on the common timeline (host ns); -9223372036854775808 (INT64_MIN) for other events")
        try end.close()
        try g.writeDataset("stream", strings: events.map(\.stream)).close()
        try g.writeDataset("kind", strings: events.map(\.kind)).close()
        try g.writeDataset("source", strings: events.map(\.source)).close()
        try g.writeDataset("message", strings: events.map(\.message)).close()
        let values = try g.writeDataset("values_json", strings: events.map(\.valuesJSON))
        try values.setAttribute("encoding", "application/json")
        try values.close()
        try g.close()
    }

    /// `/entry/metadata`: the run's metadata as groups and datasets, and as JSON.
    private func writeMetadata() throws {
        let g = try entry.createGroup("metadata", nxClass: "NXcollection")
        let tree = try JSONTree(encoding: plan.manifest.metadata)
        var names = UniqueNames(reserved: ["metadata_json"])
        switch tree {
        case .object(let members):
            for (key, value) in members { try NXTreeWriter.write(value, key: key, name: names.claim(ExportPlan.nexusName(key)), into: g) }
        default:
            try NXTreeWriter.write(tree, key: "value", name: names.claim("value"), into: g)
        }
        let json = try g.writeScalar("metadata_json", try JSONTree.json(plan.manifest.metadata, pretty: false))
        try json.setAttribute("encoding", "application/json")
        try json.close()
        try g.close()
    }

    /// `/entry/recording`: what was produced, written and dropped per stream, and the durability bound.
    private func writeRecording() throws {
        let m = plan.manifest
        let g = try entry.createGroup("recording", nxClass: "NXcollection")
        try g.writeScalar("durability", m.durability).close()
        try g.writeScalar("segments", Int64(m.segments)).close()
        if let summary = m.summary {
            try g.writeDataset("stream", strings: summary.map(\.name)).close()
            try g.writeDataset("produced", summary.map(\.produced)).close()
            try g.writeDataset("written", summary.map(\.written)).close()
            try g.writeDataset("dropped", summary.map(\.dropped)).close()
            let bytes = try g.writeDataset("bytes", summary.map(\.bytes))
            try bytes.setAttribute("units", "B")
            try bytes.close()
        }
        if let interruptions = m.interruptions, !interruptions.isEmpty {
            let i = try g.createGroup("interruptions", nxClass: "NXcollection")
            try i.setAttribute("description", "stretches during which the disk refused writes and the run paused")
            for (name, values) in [("from_host_time_ns", interruptions.map(\.from.nanoseconds)), ("to_host_time_ns", interruptions.map(\.to.nanoseconds))] {
                let d = try i.writeDataset(name, values)
                try d.setAttribute("units", "ns")
                try d.close()
            }
            try i.writeDataset("lost_records", interruptions.map(\.lostRecords)).close()
            try i.writeDataset("error", strings: interruptions.map(\.error)).close()
            try i.close()
        }
        if let recovery = m.recovery {
            let r = try g.writeScalar("recovery_json", try JSONTree.json(recovery, pretty: false))
            try r.setAttribute("encoding", "application/json")
            try r.setAttribute("description", "what recovering the run after the daemon died found and did")
            try r.close()
        }
        try g.close()
    }

    private func writeProvenance() throws {
        let g = try entry.createGroup("provenance", nxClass: "NXnote")
        try g.writeScalar("type", "application/json").close()
        try g.writeScalar("description", "where the run came from: daemon and driver versions, the configuration as loaded, device identities, libraries, host")
            .close()
        try g.writeScalar("data", try JSONTree.json(plan.manifest.provenance, pretty: true)).close()
        try g.close()
    }
}

/// The time columns every NXdata group and the events collection share.
enum NXColumns {
    static func describe(time: HDF5Dataset, host: HDF5Dataset, device: HDF5Dataset, uncertainty: HDF5Dataset, runStart: String) throws {
        try time.setAttribute("units", "s")
        try time.setAttribute("start", runStart)
        try time.setAttribute("long_name", "time since the run's start (s)")
        try host.setAttribute("units", "ns")
        try host.setAttribute(
            "description", "on the common timeline: host CLOCK_MONOTONIC_RAW ns (device time mapped through the refitted device clock, or the host stamp)")
        try device.setAttribute("units", "ns")
        try device.setAttribute("missing_value", RecordLayout.noDeviceTime)
        try device.setAttribute("description", "the device's own clock, ns; -9223372036854775808 (INT64_MIN) where the device gave none")
        try uncertainty.setAttribute("units", "ns")
        try uncertainty.setAttribute("missing_value", Int64(-1))
        try uncertainty.setAttribute("description", "half-width of the interval around host_time_ns that holds the true instant; -1 where unknown")
    }

    static func writeTimes(in g: HDF5Group, time: [Double], host: [Int64], device: [Int64], uncertainty: [Int64], runStart: String) throws {
        let t = try g.writeDataset("time", time)
        let h = try g.writeDataset("host_time_ns", host)
        let d = try g.writeDataset("device_time_ns", device)
        let u = try g.writeDataset("time_uncertainty_ns", uncertainty)
        try describe(time: t, host: h, device: d, uncertainty: u, runStart: runStart)
        for x in [t, h, d, u] { try x.close() }
    }
}

/// One data stream's NXdata group: appendable datasets and the rows buffered for them.
final class NXDataOutput {
    let stream: ExportedStream
    let group: HDF5Group
    let time: HDF5Dataset
    let host: HDF5Dataset
    let device: HDF5Dataset
    let uncertainty: HDF5Dataset
    let sequence: HDF5Dataset
    /// Samples: one dataset per field. Frames: `data`.
    let columns: [HDF5Dataset]
    private var times: [Double] = []
    private var hosts: [Int64] = []
    private var devices: [Int64] = []
    private var uncertainties: [Int64] = []
    private var sequences: [UInt64] = []
    /// Raw little-endian bytes per column (samples) or of whole frames.
    private var columnBytes: [[UInt8]]
    private var buffered = 0
    private let flushRows: Int
    private(set) var records = 0
    private(set) var rows = 0

    init(_ stream: ExportedStream, in entry: HDF5Group, runStart: String) throws {
        self.stream = stream
        let d = stream.descriptor
        group = try entry.createGroup(stream.name, nxClass: "NXdata")
        let column = HDF5Chunking(rows: NeXusWriter.columnChunkRows)
        time = try group.createAppendableDataset("time", type: .float64, chunking: column)
        host = try group.createAppendableDataset("host_time_ns", type: .int64, chunking: column)
        device = try group.createAppendableDataset("device_time_ns", type: .int64, chunking: column)
        uncertainty = try group.createAppendableDataset("time_uncertainty_ns", type: .int64, chunking: column)
        sequence = try group.createAppendableDataset("sequence", type: .uint64, chunking: column)
        try sequence.setAttribute("description", "the record's sequence number in its stream (a gap is a dropped record)")
        try NXColumns.describe(time: time, host: host, device: device, uncertainty: uncertainty, runStart: runStart)
        try group.setAttribute("stream", d.name)
        try group.setAttribute("device", d.device)
        try group.setAttribute("nominal_rate_hz", d.nominalRateHz)
        let type = stream.elementType
        if d.kind == .frames {
            let chunking = HDF5Chunking.sized(rowElements: stream.rowElements, elementSize: type.size)
            let data = try group.createAppendableDataset("data", type: type, rowShape: [stream.rowElements], chunking: chunking)
            try data.setAttribute("units", stream.columnUnits.first ?? "")
            try data.setAttribute("long_name", d.fields.first.map { "\($0.name) (\($0.unit))" } ?? "data")
            if d.shape.count > 1 {
                try data.setAttribute("frame_shape", d.shape.map { Int64($0) })
            } else {
                try data.setAttribute("interpretation", "spectrum")
            }
            columns = [data]
            let channel = try group.writeDataset("channel", (0..<stream.rowElements).map { Int64($0) })
            try channel.setAttribute("long_name", "element index in the frame")
            try channel.close()
            try group.setAttribute("signal", "data")
            try group.setAttribute("axes", ["time", "channel"])
            try group.setAttribute("time_indices", Int64(0))
            try group.setAttribute("channel_indices", Int64(1))
            let frameBytes = max(1, stream.rowBytes)
            flushRows =
                chunking.rowElements == nil
                ? chunking.rows * max(1, NeXusWriter.frameBatchBytes / (chunking.rows * frameBytes)) : max(1, NeXusWriter.frameBatchBytes / frameBytes)
            columnBytes = [[]]
            columnBytes[0].reserveCapacity(flushRows * frameBytes)
        } else {
            // At least the 1-D columns' rows, and at least 128 KiB for narrow types.
            let chunking = HDF5Chunking(rows: max(NeXusWriter.columnChunkRows, (128 << 10) / type.size))
            var cols: [HDF5Dataset] = []
            for (k, name) in stream.columnNames.enumerated() {
                let c = try group.createAppendableDataset(name, type: type, chunking: chunking)
                try c.setAttribute("units", stream.columnUnits[k])
                if d.fields.indices.contains(k) { try c.setAttribute("long_name", "\(d.fields[k].name) (\(d.fields[k].unit))") }
                cols.append(c)
            }
            columns = cols
            try group.setAttribute("signal", stream.columnNames[0])
            try group.setAttribute("axes", "time")
            try group.setAttribute("time_indices", Int64(0))
            if stream.columnNames.count > 1 { try group.setAttribute("auxiliary_signals", Array(stream.columnNames.dropFirst())) }
            flushRows = NeXusWriter.columnChunkRows
            columnBytes = Array(repeating: [], count: stream.columnNames.count)
            for k in columnBytes.indices { columnBytes[k].reserveCapacity(flushRows * type.size + 64 * type.size) }
        }
        times.reserveCapacity(flushRows + 64)
        hosts.reserveCapacity(flushRows + 64)
        devices.reserveCapacity(flushRows + 64)
        uncertainties.reserveCapacity(flushRows + 64)
        sequences.reserveCapacity(flushRows + 64)
    }

    /// Buffers the `count` rows of record `r`, placed at `at`; appends when the buffer is full.
    func add(_ r: StoredRecord, rows count: Int, at: TimelineInstant, runStartNs: Int64) throws {
        records += 1
        guard count > 0 else { return }
        let period = stream.periodNs
        for k in 0..<count {
            let offset = Int64(k) &* period
            let h = at.host.nanoseconds &+ offset
            times.append(Double(h &- runStartNs) / 1e9)
            hosts.append(h)
            devices.append(r.header.deviceTime.map { $0 &+ offset } ?? RecordLayout.noDeviceTime)
            uncertainties.append(at.uncertaintyNs ?? -1)
            sequences.append(r.header.sequence)
        }
        if stream.descriptor.kind == .frames {
            columnBytes[0].append(contentsOf: r.payload[0..<stream.rowBytes])
        } else {
            let size = stream.elementType.size
            let width = stream.rowElements
            r.payload.withUnsafeBytes { p in
                for k in 0..<count {
                    for f in 0..<width {
                        let o = (k * width + f) * size
                        columnBytes[f].append(contentsOf: UnsafeRawBufferPointer(rebasing: p[o..<(o + size)]))
                    }
                }
            }
        }
        buffered += count
        rows += count
        if buffered >= flushRows { try flush() }
    }

    func flush() throws {
        guard buffered > 0 else { return }
        try time.append(times)
        try host.append(hosts)
        try device.append(devices)
        try uncertainty.append(uncertainties)
        try sequence.append(sequences)
        for (k, c) in columns.enumerated() {
            try columnBytes[k].withUnsafeBytes { try c.append(rows: buffered, littleEndian: $0) }
            columnBytes[k].removeAll(keepingCapacity: true)
        }
        times.removeAll(keepingCapacity: true)
        hosts.removeAll(keepingCapacity: true)
        devices.removeAll(keepingCapacity: true)
        uncertainties.removeAll(keepingCapacity: true)
        sequences.removeAll(keepingCapacity: true)
        buffered = 0
    }

    /// Appends what is buffered and closes every dataset and the group.
    func finish() throws {
        try flush()
        for d in [time, host, device, uncertainty, sequence] + columns { try d.close() }
        try group.close()
    }
}

/// One device's raw clock observations under `/entry/clock/<device>`.
final class NXClockOutput {
    let group: HDF5Group
    let before: HDF5Dataset
    let after: HDF5Dataset
    let device: HDF5Dataset
    let kind: HDF5Dataset
    private var buffers: ([Int64], [Int64], [Int64], [Int64]) = ([], [], [], [])
    private(set) var observations = 0

    init(device name: String, name groupName: String, in parent: HDF5Group, fit: DeviceClockFit?) throws {
        group = try parent.createGroup(groupName, nxClass: "NXcollection")
        try group.setAttribute("device", name)
        let column = HDF5Chunking(rows: NeXusWriter.columnChunkRows)
        before = try group.createAppendableDataset("host_before_ns", type: .int64, chunking: column)
        after = try group.createAppendableDataset("host_after_ns", type: .int64, chunking: column)
        device = try group.createAppendableDataset("device_time_ns", type: .int64, chunking: column)
        kind = try group.createAppendableDataset("kind", type: .int64, chunking: column)
        for d in [before, after, device] { try d.setAttribute("units", "ns") }
        try before.setAttribute("description", "host CLOCK_MONOTONIC_RAW before the exchange (= host_after_ns for one-way stamps)")
        try after.setAttribute("description", "host CLOCK_MONOTONIC_RAW when the answer or stamp arrived")
        try device.setAttribute("missing_value", RecordLayout.noDeviceTime)
        try device.setAttribute("description", "the device clock's reading, ns; -9223372036854775808 (INT64_MIN) for round trips of a device without a clock")
        try kind.setAttribute("description", "0 = bracketed query, 1 = one-way stamp, 2 = round trip")
        let refit = try group.writeScalar("refit_json", try JSONTree.json(fit ?? DeviceClockFit(device: name, observations: []), pretty: false))
        try refit.setAttribute("encoding", "application/json")
        try refit.setAttribute(
            "description", "the refit of these observations: clock segments, lines and knots (host = originHost + x + offset(x), x = device − originDevice)")
        try refit.close()
        try group.setAttribute("model", (fit?.model ?? .none).rawValue)
        buffers.0.reserveCapacity(NeXusWriter.columnChunkRows)
        buffers.1.reserveCapacity(NeXusWriter.columnChunkRows)
        buffers.2.reserveCapacity(NeXusWriter.columnChunkRows)
        buffers.3.reserveCapacity(NeXusWriter.columnChunkRows)
    }

    func add(_ o: ClockObservation) throws {
        buffers.0.append(o.hostBefore.nanoseconds)
        buffers.1.append(o.hostAfter.nanoseconds)
        buffers.2.append(o.deviceTime ?? RecordLayout.noDeviceTime)
        buffers.3.append(o.kind.rawValue)
        observations += 1
        if buffers.0.count >= NeXusWriter.columnChunkRows { try flush() }
    }

    func flush() throws {
        guard !buffers.0.isEmpty else { return }
        try before.append(buffers.0)
        try after.append(buffers.1)
        try device.append(buffers.2)
        try kind.append(buffers.3)
        buffers.0.removeAll(keepingCapacity: true)
        buffers.1.removeAll(keepingCapacity: true)
        buffers.2.removeAll(keepingCapacity: true)
        buffers.3.removeAll(keepingCapacity: true)
    }

    func finish() throws {
        try flush()
        for d in [before, after, device, kind] { try d.close() }
        try group.close()
    }
}

/// Mirrors a JSON tree into HDF5: objects become NXcollection groups, strings, numbers and
/// booleans scalar datasets, arrays of strings or numbers 1-D datasets; anything else (null,
/// mixed or nested arrays) a JSON string marked `encoding="application/json"`. Numbers are
/// float64 whether or not the JSON text had a fraction (metadata numbers are quantities, and a
/// field keeps one type from run to run); only integers beyond 2^53 stay int64, to stay exact.
/// A name that had to change to be a NeXus name keeps its key in the attribute `key`.
enum NXTreeWriter {
    static func write(_ tree: JSONTree, key: String, name: String, into parent: HDF5Group) throws {
        let object: HDF5Object
        switch tree {
        case .object(let members):
            let g = try parent.createGroup(name, nxClass: "NXcollection")
            var names = UniqueNames()
            for (k, v) in members { try write(v, key: k, name: names.claim(ExportPlan.nexusName(k)), into: g) }
            object = g
        case .string(let s): object = try parent.writeScalar(name, s)
        case .integer(let i): object = tree.isExactAsDouble ? try parent.writeScalar(name, Double(i)) : try parent.writeScalar(name, i)
        case .number(let d): object = try parent.writeScalar(name, d)
        case .bool(let b): object = try parent.writeScalar(name, b)
        case .array(let items):
            if !items.isEmpty, let strings = items.stringValues {
                object = try parent.writeDataset(name, strings: strings)
            } else if !items.isEmpty, let numbers = items.numberValues, items.allSatisfy(\.isExactAsDouble) {
                object = try parent.writeDataset(name, numbers)
            } else if !items.isEmpty, let integers = items.integerValues {
                object = try parent.writeDataset(name, integers)
            } else {
                object = try parent.writeScalar(name, tree.json)
                try object.setAttribute("encoding", "application/json")
            }
        case .null:
            object = try parent.writeScalar(name, "null")
            try object.setAttribute("encoding", "application/json")
        }
        if name != key { try object.setAttribute("key", key) }
        try object.close()
    }
}

// MARK: - Shared by NeXusExport and CSVExport

/// A data stream as exported: its output name, its clock and how its records split into rows.
struct ExportedStream {
    let descriptor: StreamDescriptor
    /// `<device>_<stream>`, a valid NeXus name, unique in the entry: the NXdata group and CSV file.
    let name: String
    let clock: DeviceClockFit?
    /// Nanoseconds between the rows of one samples record (the nominal period).
    let periodNs: Int64
    let elementType: HDF5ElementType
    /// Elements per row: the fields of a sample, the elements of a frame.
    let rowElements: Int
    let rowBytes: Int
    /// Samples: a dataset (column) name per field, unique in the group; frames: the value name.
    let columnNames: [String]
    let columnUnits: [String]

    /// The record's time on the common timeline.
    func place(_ h: RecordHeader) -> TimelineInstant {
        clock?.map(deviceTime: h.deviceTime, hostTime: h.hostTime) ?? TimelineInstant(host: h.hostTime, uncertaintyNs: nil)
    }

    /// Whole rows in a record, and whether bytes were left over; nil when the record cannot be
    /// exported at all (a frame of another size, an empty samples record).
    func rows(in r: StoredRecord) -> (count: Int, malformed: Bool)? {
        if descriptor.kind == .frames { return r.payload.count == rowBytes ? (1, false) : nil }
        let n = r.payload.count / rowBytes
        return n > 0 ? (n, r.payload.count % rowBytes != 0) : nil
    }
}

/// Which streams of a run are exported, and how.
struct ExportPlan {
    enum Role {
        case data(Int)
        case events(StreamDescriptor)
        case clock
    }

    let reader: RunReader
    let manifest: RunManifest
    let clocks: RunClocks
    /// Host time of the run's start anchor: `time` counts seconds from here.
    let runStartNs: Int64
    let streams: [ExportedStream]
    let clockStreams: [StreamDescriptor]
    let roles: [UInt32: Role]

    /// Names used by the entry itself (and `events.csv`), which stream groups must not take.
    static let entryNames: Set<String> = [
        "title", "entry_identifier", "start_time", "end_time", "duration", "program_name", "run_state", "start_reason", "stop_reason",
        "instrument", "events", "clock", "metadata", "recording", "provenance",
    ]
    /// Datasets every NXdata group has, which field names must not take.
    static let columnNames: Set<String> = ["time", "host_time_ns", "device_time_ns", "time_uncertainty_ns", "sequence", "data", "channel"]
    /// Units of length: fields in one of these get an NXpositioner.
    static let lengthUnits: Set<String> = ["m", "mm", "um", "\u{00B5}m", "\u{03BC}m", "micron", "nm", "pm", "cm"]

    init(_ reader: RunReader, clocks: RunClocks) {
        self.reader = reader
        manifest = reader.manifest
        self.clocks = clocks
        runStartNs = manifest.startAnchor.host.nanoseconds
        var names = UniqueNames(reserved: Self.entryNames)
        var streams: [ExportedStream] = []
        var clockStreams: [StreamDescriptor] = []
        var roles: [UInt32: Role] = [:]
        for d in manifest.streams {
            if d.name == "\(d.device)/clock" {
                clockStreams.append(d)
                roles[d.id] = .clock
                continue
            }
            if d.kind == .events {
                roles[d.id] = .events(d)
                continue
            }
            guard let type = HDF5ElementType(d.elementType), d.elementsPerItem > 0 else { continue }
            let prefix = d.device + "/"
            let short = d.name.hasPrefix(prefix) ? String(d.name.dropFirst(prefix.count)) : d.name
            var columns = UniqueNames(reserved: Self.columnNames)
            let count = d.kind == .frames ? 1 : d.elementsPerItem
            let columnNames = (0..<count).map { k in columns.claim(Self.nexusName(d.fields.indices.contains(k) ? d.fields[k].name : "value\(k)")) }
            let units = (0..<count).map { k in d.fields.indices.contains(k) ? d.fields[k].unit : "" }
            let rate = d.nominalRateHz
            roles[d.id] = .data(streams.count)
            streams.append(
                ExportedStream(
                    descriptor: d, name: names.claim(Self.nexusName("\(d.device)_\(short)")), clock: clocks.device(d.device),
                    periodNs: rate > 0 ? Int64(1e9 / rate) : 0, elementType: type, rowElements: d.elementsPerItem,
                    rowBytes: d.elementsPerItem * d.elementType.size, columnNames: columnNames, columnUnits: units))
        }
        self.streams = streams
        self.clockStreams = clockStreams
        self.roles = roles
    }

    /// A NeXus-friendly name: letters, digits and `_` (anything else becomes `_`).
    static func nexusName(_ s: String) -> String {
        let mapped = String(
            s.unicodeScalars.map { c -> Character in
                c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c) || c == "_") ? Character(c) : "_"
            })
        return mapped.isEmpty ? "_" : mapped
    }
}

/// Hands out names, adding `_2`, `_3`, … to a name already taken.
struct UniqueNames {
    private var taken: Set<String>

    init(reserved: Set<String> = []) { taken = reserved }

    mutating func claim(_ name: String) -> String {
        var candidate = name
        var n = 2
        while taken.contains(candidate) {
            candidate = "\(name)_\(n)"
            n += 1
        }
        taken.insert(candidate)
        return candidate
    }
}

/// An event as exported: placed on the common timeline.
struct ExportEvent {
    var hostNs: Int64
    var deviceNs: Int64?
    var uncertaintyNs: Int64?
    var endNs: Int64?
    var stream: String
    var kind: String
    var source: String
    var message: String
    var valuesJSON: String
    /// Position in the run, to keep the order of events at the same instant.
    var order: Int

    static func sorted(_ events: [ExportEvent]) -> [ExportEvent] {
        events.sorted { ($0.hostNs, $0.order) < ($1.hostNs, $1.order) }
    }
}

/// Decodes stored events and places them on the common timeline.
struct EventDecoder {
    private let decoder = JSONDecoder()
    private let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }()
    private var count = 0

    /// The event in `r`, or nil when it is not an event. One with a device time is placed through
    /// the refitted clock of its stream's device when the refit covers it, as `align` does;
    /// otherwise it keeps the time and uncertainty it was recorded with.
    mutating func decode(_ r: StoredRecord, stream: StreamDescriptor, clock: DeviceClockFit?) -> ExportEvent? {
        guard let e = try? decoder.decode(Event.self, from: Data(r.payload)) else { return nil }
        var at = TimelineInstant(host: e.hostTime, uncertaintyNs: e.uncertaintyNs)
        if let d = e.deviceTime, let clock {
            let m = clock.map(deviceTime: d, hostTime: e.hostTime)
            if m.uncertaintyNs != nil { at = m }
        }
        let values = (try? encoder.encode(e.values)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        count += 1
        return ExportEvent(
            hostNs: at.host.nanoseconds, deviceNs: e.deviceTime, uncertaintyNs: at.uncertaintyNs, endNs: e.endTime?.nanoseconds, stream: stream.name,
            kind: e.kind.rawValue, source: e.source, message: e.message, valuesJSON: values, order: count)
    }
}

/// A JSON value as a tree (what JSONSerialization gives), so the manifest's metadata is
/// exported whatever Swift type holds it: anything Encodable is re-encoded and read back.
indirect enum JSONTree: Equatable {
    case object([(String, JSONTree)])
    case array([JSONTree])
    case string(String)
    case integer(Int64)
    case number(Double)
    case bool(Bool)
    case null

    static func == (a: JSONTree, b: JSONTree) -> Bool { a.json == b.json }

    /// A number a Double holds exactly (every real; integers up to 2^53).
    var isExactAsDouble: Bool {
        switch self {
        case .number: true
        case .integer(let i): i.magnitude <= 1 << 53
        default: false
        }
    }

    /// `value` encoded with JSONEncoder and read back with JSONSerialization; object keys sorted.
    init(encoding value: some Encodable) throws {
        let data = try JSONEncoder().encode(value)
        self.init(try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]))
    }

    init(_ object: Any) {
        switch object {
        case let d as [String: Any]: self = .object(d.keys.sorted().map { ($0, JSONTree(d[$0]!)) })
        case let a as [Any]: self = .array(a.map(JSONTree.init))
        case let s as String: self = .string(s)
        case let n as NSNumber:
            // JSONSerialization keeps what the text said: a boolean, an integer or a real.
            switch String(cString: n.objCType) {
            case "c", "B": self = .bool(n.boolValue)
            case "f", "d": self = .number(n.doubleValue)
            case "Q" where n.uint64Value > UInt64(Int64.max): self = .number(n.doubleValue)
            default: self = .integer(n.int64Value)
            }
        default: self = .null
        }
    }

    /// Compact JSON of the tree (keys sorted).
    var json: String {
        switch self {
        case .object(let members): "{" + members.map { Self.quote($0.0) + ":" + $0.1.json }.joined(separator: ",") + "}"
        case .array(let items): "[" + items.map(\.json).joined(separator: ",") + "]"
        case .string(let s): Self.quote(s)
        case .integer(let i): String(i)
        case .number(let d): d.isFinite ? "\(d)" : "null"
        case .bool(let b): b ? "true" : "false"
        case .null: "null"
        }
    }

    private static func quote(_ s: String) -> String {
        let data = (try? JSONEncoder().encode(s)) ?? Data("\"\"".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// `value` as JSON text, keys sorted.
    static func json(_ value: some Encodable, pretty: Bool) throws -> String {
        let e = JSONEncoder()
        e.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
        return String(decoding: try e.encode(value), as: UTF8.self)
    }
}

extension Array where Element == JSONTree {
    var stringValues: [String]? {
        var out: [String] = []
        for v in self {
            guard case .string(let s) = v else { return nil }
            out.append(s)
        }
        return out
    }

    var integerValues: [Int64]? {
        var out: [Int64] = []
        for v in self {
            guard case .integer(let i) = v else { return nil }
            out.append(i)
        }
        return out
    }

    var numberValues: [Double]? {
        var out: [Double] = []
        for v in self {
            switch v {
            case .integer(let i): out.append(Double(i))
            case .number(let d): out.append(d)
            default: return nil
            }
        }
        return out
    }
}

/// Files around an export: the destination check, the final sync and rename, sizes, times.
enum ExportFiles {
    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let p = String(path[..<slash])
        return p.isEmpty ? "/" : p
    }

    /// Fails with a clear message unless `path`'s directory exists (nothing is created).
    static func checkParentDirectory(of path: String) throws {
        let dir = parent(of: path)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDirectory) else {
            throw ExportError("cannot write \(path): the directory \(dir) does not exist; create it or export somewhere else")
        }
        guard isDirectory.boolValue else { throw ExportError("cannot write \(path): \(dir) is not a directory") }
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            throw ExportError("cannot write \(path): it is a directory; give a file name")
        }
    }

    /// fsyncs `partial`, renames it to `path` and fsyncs the directory: the file appears whole or not at all.
    static func syncAndRename(_ partial: String, to path: String) throws {
        let fd = try FileDescriptor.open(partial, flags: O_RDONLY)
        do {
            try fd.sync()
        } catch {
            fd.close()
            throw ExportError("cannot sync \(partial): \(error)")
        }
        fd.close()
        guard rename(partial, path) == 0 else { throw ExportError("cannot rename \(partial) to \(path): \(Errno.current)") }
        try? FileSystem.syncDirectory(parent(of: path))
    }

    static func size(_ path: String) -> Int {
        var info = stat()
        return stat(path, &info) == 0 ? Int(info.st_size) : 0
    }

    static func iso8601Now() -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: Date())
    }
}
