import Foundation
import OperandoCore
import OperandoIO
import OperandoStore

/// Writes a run as CSV files for spreadsheets and scripts, into one directory:
///
/// - `<device>_<stream>.csv` per data stream (the NXdata group names of `NeXusExport`), one line
///   per sample (samples) or per frame (frames), with units in brackets in the header:
///   `time [s],host_time_ns,device_time_ns,time_uncertainty_ns,sequence,E [V],I [A],…` or
///   `…,sequence,counts_0 [counts],counts_1 [counts],…`. `time` counts seconds from the run's start
///   anchor; an absent device time or an unknown uncertainty is an empty cell.
/// - `events.csv`: every event of the run, sorted by time:
///   `time [s],host_time_ns,device_time_ns,time_uncertainty_ns,end_host_time_ns,stream,kind,source,message,values_json`.
///
/// Times are placed exactly as in `NeXusExport`. Numbers are written losslessly (the shortest
/// text that reads back as the same value); fields are quoted as RFC 4180 says (a field holding
/// a comma, a quote or a line break is enclosed in quotes, quotes doubled) and lines end in CRLF.
/// One pass over the segments, through 1 MiB output buffers; each file is written as
/// `NAME.csv.partial` and renamed when all are complete, so a failed export leaves none.
public enum CSVExport {
    /// Exports `reader`'s run into `directory` (created if missing). `clocks` defaults to a refit
    /// of the run's stored clock observations; `progress` gets the fraction done.
    @discardableResult
    public static func write(_ reader: RunReader, clocks: RunClocks? = nil, to directory: String, progress: ((Double) -> Void)? = nil) throws -> ExportSummary {
        let plan = ExportPlan(reader, clocks: try clocks ?? RunClocks.fit(reader))
        do {
            try FileSystem.makeDirectories(directory)
        } catch {
            throw ExportError("cannot create the export directory \(directory): \(error)")
        }
        var files: [CSVFile] = []
        do {
            var outputs: [CSVStreamOutput] = []
            for s in plan.streams {
                let file = try CSVFile(directory + "/" + s.name + ".csv")
                files.append(file)
                outputs.append(CSVStreamOutput(s, file: file, runStartNs: plan.runStartNs))
            }
            let eventsFile = try CSVFile(directory + "/events.csv")
            files.append(eventsFile)
            var decoder = EventDecoder()
            var events: [ExportEvent] = []
            var malformed = 0
            let scan = try reader.records(progress: progress.map { p in { p($0 * 0.99) } }) { r in
                switch plan.roles[r.header.streamID] {
                case .data(let i)?:
                    let output = outputs[i]
                    guard let rows = output.stream.rows(in: r) else {
                        malformed += 1
                        return
                    }
                    if rows.malformed { malformed += 1 }
                    try output.add(r, rows: rows.count)
                case .events(let s)?:
                    if let e = decoder.decode(r, stream: s, clock: plan.clocks.device(s.device)) { events.append(e) } else { malformed += 1 }
                case .clock?, nil:
                    break
                }
            }
            let sorted = ExportEvent.sorted(events)
            eventsFile.writeLine([
                "time [s]", "host_time_ns", "device_time_ns", "time_uncertainty_ns", "end_host_time_ns", "stream", "kind", "source", "message", "values_json",
            ])
            for e in sorted {
                eventsFile.edit { line in
                    line.write(double: Double(e.hostNs &- plan.runStartNs) / 1e9)
                    line.comma()
                    line.write(int: e.hostNs)
                    line.comma()
                    if let d = e.deviceNs { line.write(int: d) }
                    line.comma()
                    if let u = e.uncertaintyNs { line.write(int: u) }
                    line.comma()
                    if let end = e.endNs { line.write(int: end) }
                    for text in [e.stream, e.kind, e.source, e.message, e.valuesJSON] {
                        line.comma()
                        line.write(field: text)
                    }
                    line.endLine()
                }
                try eventsFile.flushIfFull()
            }
            for f in files { try f.complete() }
            for f in files { try f.publish() }
            try? FileSystem.syncDirectory(directory)
            progress?(1)
            return ExportSummary(
                path: directory,
                streams: outputs.map { .init(name: $0.stream.descriptor.name, output: $0.stream.name + ".csv", records: $0.records, rows: $0.rows) },
                events: sorted.count, clockObservations: 0, bytes: files.reduce(0) { $0 + $1.bytes }, recordsRead: scan.records,
                damagedRegions: scan.damagedRegions, tornTailBytes: scan.tornTailBytes, malformedRecords: malformed)
        } catch {
            for f in files { f.abandon() }
            throw error
        }
    }
}

/// One data stream's CSV file: the header, then a line per row.
final class CSVStreamOutput {
    let stream: ExportedStream
    let file: CSVFile
    let runStartNs: Int64
    private(set) var records = 0
    private(set) var rows = 0

    init(_ stream: ExportedStream, file: CSVFile, runStartNs: Int64) {
        self.stream = stream
        self.file = file
        self.runStartNs = runStartNs
        var header = ["time [s]", "host_time_ns", "device_time_ns", "time_uncertainty_ns", "sequence"]
        let d = stream.descriptor
        func named(_ name: String, _ unit: String) -> String { unit.isEmpty ? name : "\(name) [\(unit)]" }
        if d.kind == .frames {
            let field = d.fields.first
            header += (0..<stream.rowElements).map { named("\(field?.name ?? "value")_\($0)", field?.unit ?? "") }
        } else {
            header += (0..<stream.rowElements).map { k in d.fields.indices.contains(k) ? named(d.fields[k].name, d.fields[k].unit) : "value\(k)" }
        }
        file.writeLine(header)
    }

    /// Writes the `count` rows of `r`: times as `NeXusExport` places them, then the values.
    func add(_ r: StoredRecord, rows count: Int) throws {
        records += 1
        let at = stream.place(r.header)
        let width = stream.rowElements
        let size = stream.descriptor.elementType.size
        let type = stream.descriptor.elementType
        let period = stream.periodNs
        let runStart = runStartNs
        file.edit { text in
            r.payload.withUnsafeBytes { p in
                for k in 0..<count {
                    let offset = Int64(k) &* period
                    let host = at.host.nanoseconds &+ offset
                    text.write(double: Double(host &- runStart) / 1e9)
                    text.comma()
                    text.write(int: host)
                    text.comma()
                    if let d = r.header.deviceTime { text.write(int: d &+ offset) }
                    text.comma()
                    if let u = at.uncertaintyNs { text.write(int: u) }
                    text.comma()
                    text.write(uint: r.header.sequence)
                    for f in 0..<width {
                        text.comma()
                        text.write(element: p, at: (k * width + f) * size, type)
                    }
                    text.endLine()
                }
            }
        }
        rows += count
        try file.flushIfFull()
    }
}

/// CSV text being built: fields, numbers and line ends appended to bytes. A value type, so
/// appending a row's numbers does not pay for the dynamic exclusivity checks of class storage.
struct CSVText {
    var bytes: [UInt8] = []

    @inline(__always) mutating func comma() { bytes.append(UInt8(ascii: ",")) }
    @inline(__always) mutating func endLine() {
        bytes.append(13)
        bytes.append(10)
    }

    /// A text field, quoted when it holds a comma, a quote, CR or LF (RFC 4180).
    mutating func write(field: String) {
        let utf8 = field.utf8
        if utf8.contains(where: { $0 == UInt8(ascii: ",") || $0 == UInt8(ascii: "\"") || $0 == 10 || $0 == 13 }) {
            bytes.append(UInt8(ascii: "\""))
            for b in utf8 {
                if b == UInt8(ascii: "\"") { bytes.append(b) }
                bytes.append(b)
            }
            bytes.append(UInt8(ascii: "\""))
        } else {
            bytes.append(contentsOf: utf8)
        }
    }

    /// Decimal digits, formed in a buffer on the stack.
    mutating func write(uint v: UInt64) {
        if v < 10 {
            bytes.append(48 &+ UInt8(truncatingIfNeeded: v))
            return
        }
        var scratch: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for 20 digits
        withUnsafeMutableBytes(of: &scratch) { d in
            var v = v
            var i = d.count
            repeat {
                i -= 1
                d[i] = 48 &+ UInt8(truncatingIfNeeded: v % 10)
                v /= 10
            } while v > 0
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: d[i...]))
        }
    }

    mutating func write(int v: Int64) {
        if v < 0 { bytes.append(UInt8(ascii: "-")) }
        write(uint: v.magnitude)
    }

    /// The shortest decimal that reads back as exactly `v` (Swift's description).
    mutating func write(double v: Double) { bytes.append(contentsOf: v.description.utf8) }

    /// One little-endian element of a record's payload, losslessly.
    mutating func write(element p: UnsafeRawBufferPointer, at o: Int, _ type: ElementType) {
        switch type {
        case .uint8, .json: write(uint: UInt64(p[o]))
        case .uint16: write(uint: UInt64(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt16.self))))
        case .uint32: write(uint: UInt64(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt32.self))))
        case .uint64: write(uint: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt64.self)))
        case .int16: write(int: Int64(Int16(littleEndian: p.loadUnaligned(fromByteOffset: o, as: Int16.self))))
        case .int32: write(int: Int64(Int32(littleEndian: p.loadUnaligned(fromByteOffset: o, as: Int32.self))))
        case .int64: write(int: Int64(littleEndian: p.loadUnaligned(fromByteOffset: o, as: Int64.self)))
        case .float32:
            let f = Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt32.self)))
            bytes.append(contentsOf: f.description.utf8)
        case .float64: write(double: Double(bitPattern: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt64.self))))
        }
    }
}

/// A CSV file written through a 1 MiB buffer, as `path.partial` until `publish()`.
final class CSVFile {
    static let bufferBytes = 1 << 20

    let path: String
    let partial: String
    private var fd: FileDescriptor?
    private var text = CSVText()
    private(set) var bytes = 0

    init(_ path: String) throws {
        self.path = path
        partial = path + ".partial"
        do {
            fd = try FileDescriptor.createTruncating(partial)
        } catch {
            throw ExportError("cannot create \(partial): \(error)")
        }
        text.bytes.reserveCapacity(Self.bufferBytes + 64 << 10)
    }

    deinit { fd?.close() }

    /// Appends to the buffered text (one exclusive access for a whole record's rows).
    func edit(_ body: (inout CSVText) -> Void) { body(&text) }

    /// A whole line of text fields.
    func writeLine(_ fields: [String]) {
        edit { text in
            for (i, f) in fields.enumerated() {
                if i > 0 { text.comma() }
                text.write(field: f)
            }
            text.endLine()
        }
    }

    func flushIfFull() throws {
        if text.bytes.count >= Self.bufferBytes { try flush() }
    }

    func flush() throws {
        guard let fd, !text.bytes.isEmpty else { return }
        do {
            try fd.writeAll(text.bytes)
        } catch {
            throw ExportError("cannot write \(partial): \(error)")
        }
        bytes += text.bytes.count
        text.bytes.removeAll(keepingCapacity: true)
    }

    /// Writes what is buffered, fsyncs and closes the partial file.
    func complete() throws {
        try flush()
        guard let fd else { return }
        self.fd = nil
        defer { fd.close() }
        do {
            try fd.sync()
        } catch {
            throw ExportError("cannot sync \(partial): \(error)")
        }
    }

    /// Renames the completed partial file to its name.
    func publish() throws {
        guard rename(partial, path) == 0 else { throw ExportError("cannot rename \(partial) to \(path): \(Errno.current)") }
    }

    /// Closes and removes the partial file (after a failure).
    func abandon() {
        fd?.close()
        fd = nil
        unlink(partial)
    }
}
