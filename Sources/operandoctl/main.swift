import ArgumentParser
import Foundation
import OperandoControl
import OperandoCore
import OperandoIO
import OperandoStore
import OperandoTimeline
import TOMLKit

struct Global: ParsableArguments {
    @Option(name: .long, help: "Control socket (default: $OPERANDO_SOCKET or /run/operandod/control.sock).")
    var socket: String?

    @Flag(name: .long, help: "Print the daemon's JSON result instead of a table.")
    var json = false

    var socketPath: String {
        socket ?? ProcessInfo.processInfo.environment[ControlProtocol.socketEnvironmentVariable] ?? ControlProtocol.defaultSocketPath
    }

    /// Sends one request and returns its result, or exits with the daemon's error.
    func call(_ cmd: String, _ args: [String: JSONValue] = [:], timeout: Duration = .seconds(30)) throws -> JSONValue {
        let connection: UnixConnection
        do {
            connection = try UnixConnection.connect(to: socketPath)
        } catch {
            fail("cannot reach operandod at \(socketPath): \(error). Is it running (systemctl status operandod)? Use --socket or OPERANDO_SOCKET for another path.", code: 3)
        }
        let request = ControlRequest(id: .number(1), cmd: cmd, args: args)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        try connection.send(Array(try encoder.encode(request)) + [0x0A])
        var framer = LineFramer(maxLineBytes: 64 << 20)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard let bytes = try connection.receive(timeout: .milliseconds(200)) else { continue }
            if bytes.isEmpty { fail("operandod closed the connection without replying to \(cmd)", code: 1) }
            for case .line(let line) in framer.feed(bytes) {
                let reply = try JSONDecoder().decode(ControlReply.self, from: Data(line))
                if reply.ok { return reply.result ?? .null }
                if json { printJSON(.object(["ok": .bool(false), "error": .object(["code": .string(reply.error?.code.rawValue ?? "?"), "message": .string(reply.error?.message ?? "")])])) }
                fail(reply.error?.message ?? "unknown error", code: 1)
            }
        }
        fail("no reply to \(cmd) from operandod within \(timeout)", code: 1)
    }

    func output<T: Decodable>(_ value: JSONValue, as type: T.Type, table: (T) -> String) throws {
        if json {
            printJSON(value)
        } else {
            print(table(try value.decode(T.self)), terminator: "")
        }
    }
}

func printJSON(_ value: JSONValue) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: (try? encoder.encode(value)) ?? Data(), as: UTF8.self))
}

func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data("operandoctl: \(message)\n".utf8))
    exit(code)
}

/// A plain text table with aligned columns.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { i in all.map { $0[i].count }.max() ?? 0 }
    return all.map { row in row.enumerated().map { i, cell in cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }.joined(separator: "  ").trimmingCharacters(in: .whitespaces) }
        .joined(separator: "\n") + "\n"
}

func bytes(_ n: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n)
    var u = 0
    while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
}

/// "12.3µs", "4.56ms".
func microseconds(_ ns: Int64) -> String {
    ns >= 1_000_000 ? String(format: "%.2fms", Double(ns) / 1e6) : String(format: "%.1fµs", Double(ns) / 1e3)
}

/// A run directory given on the command line (it holds run.json): read here, without the daemon.
func localRun(_ run: String) throws -> RunReader? {
    guard FileManager.default.fileExists(atPath: run + "/run.json") else { return nil }
    do {
        return try RunReader(directory: run)
    } catch {
        fail("\(error)", code: 1)
    }
}

/// "90m", "24h", "3600s", "3600" → seconds.
func parseDuration(_ text: String) -> Double? {
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("min", 60), ("h", 3600), ("d", 86400)]
    for (suffix, scale) in units.sorted(by: { $0.0.count > $1.0.count }) where text.hasSuffix(suffix) {
        return Double(text.dropLast(suffix.count)).flatMap { $0 > 0 ? $0 * scale : nil }
    }
    return Double(text).flatMap { $0 > 0 ? $0 : nil }
}

/// A JSON tree from a TOML or JSON file (by its content: JSON starts with "{"): experiment
/// metadata, techniques.
func loadMetadataFile(_ path: String) throws -> JSONValue {
    guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("--meta-file \(path): cannot read it") }
    let text = String(decoding: data, as: UTF8.self)
    let json: Data
    if text.drop(while: \.isWhitespace).first == "{" {
        json = data
    } else {
        do {
            json = Data(try TOMLTable(string: text).convert(to: .json).utf8)
        } catch {
            throw ValidationError("--meta-file \(path): not valid TOML or JSON: \(error)")
        }
    }
    do {
        return try JSONDecoder().decode(JSONValue.self, from: json)
    } catch {
        throw ValidationError("--meta-file \(path): not valid JSON: \(error)")
    }
}

func duration(_ s: Double) -> String {
    let t = Int(s)
    return String(format: "%02d:%02d:%02d", t / 3600, (t / 60) % 60, t % 60)
}

@main
struct OperandoCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operandoctl",
        abstract: "Control operandod through its Unix socket.",
        usage: "operandoctl [--socket PATH] [--json] COMMAND ...",
        subcommands: [Status.self, Devices.self, Ports.self, Run.self, Mark.self, Tail.self, Move.self, Home.self, Trigger.self, TechniqueCommand.self, Abort.self, Scan.self, Bias.self, Tip.self, Refit.self, Align.self, Export.self, Recover.self, Sim.self])

    /// `operandoctl [--socket PATH] [--json] COMMAND …`: global options may come before the
    /// command; they are moved behind it, where every command's option group reads them.
    static func main() {
        var args = Array(CommandLine.arguments.dropFirst())
        var globals: [String] = []
        while let first = args.first {
            if first == "--json" || first.hasPrefix("--socket=") {
                globals.append(args.removeFirst())
            } else if first == "--socket", args.count >= 2 {
                globals += args.prefix(2)
                args.removeFirst(2)
            } else {
                break
            }
        }
        main(args + globals)
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Daemon state, the current run, and per-stream rates, ring fill and drops.")
    @OptionGroup var global: Global

    func run() throws {
        try global.output(global.call("status"), as: StatusResult.self) { s in
            var out = "operandod \(s.daemonVersion) (pid \(s.pid)), up \(duration(s.uptimeSeconds)), \(s.state)\n"
            if let r = s.run {
                out += "run \(r.name) (\(r.id)) recording for \(duration(r.elapsedSeconds ?? 0)) into \(r.directory)\n"
            }
            out += "devices: \(s.devicesConnected)/\(s.devicesTotal) connected; rings: \(bytes(UInt64(s.memoryUsedBytes))) of \(bytes(UInt64(s.memoryBudgetBytes))); written \(bytes(s.bytesWritten))\n"
            out += "durability: \(s.durability)\n"
            if let free = s.freeBytes { out += "free space: \(bytes(UInt64(free))) in \(s.dataDirectory)\n" }
            if let p = s.paused { out += "PAUSED: \(p)\n" } else if let e = s.writeError { out += "WRITE ERROR: \(e)\n" }
            for (device, a) in (s.activities ?? [:]).sorted(by: { $0.key < $1.key }) {
                let running = a["running"]?.boolValue == true
                var line = "\(device): " + (running ? "running \(a["technique"]?.stringValue ?? "?")" : "idle")
                if running {
                    line += ", step \(a["step"].map { "\($0)" } ?? "?")" + (a["step_kind"]?.stringValue.map { " (\($0))" } ?? "")
                    line += ", cycle \(a["cycle"].map { "\($0)" } ?? "?")"
                }
                if let e = a["e_v"]?.numberValue { line += String(format: ", E %.4f V", e) }
                if let i = a["i_a"]?.numberValue { line += String(format: ", I %.4g A", i) }
                out += line + "\n"
            }
            out += "\n" + table(
                ["STREAM", "RATE/s", "PRODUCED", "WRITTEN", "DROPPED", "RING", "POLICY", "WAITS"],
                s.streams.map { [$0.name, String(format: "%.1f", $0.ratePerSecond), "\($0.produced)", "\($0.written)", "\($0.dropped)", String(format: "%.1f%%", $0.ringFill * 100), $0.policy, "\($0.blockedWaits)"] })
            return out
        }
    }
}

struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Configured devices, their state and identity.")
    @OptionGroup var global: Global

    func run() throws {
        try global.output(global.call("devices"), as: [DeviceInfo].self) { devices in
            table(
                ["DEVICE", "DRIVER", "TRANSPORT", "STATE", "MODEL", "SERIAL", "FIRMWARE", "RECONNECTS", "CLOCK", "LAST ERROR"],
                devices.map {
                    [$0.name, $0.driver, $0.transport, $0.state, $0.model ?? "-", $0.serialNumber ?? "-", $0.firmware ?? "-", "\($0.reconnects)", clock($0.clock), $0.lastError ?? "-"]
                })
        }
    }

    /// "bracketed ±12.3µs +25.01ppm".
    func clock(_ c: DeviceClockInfo?) -> String {
        guard let c, c.model != "none" else { return "-" }
        var parts = [c.model]
        if let u = c.uncertaintyNs { parts.append("±" + microseconds(u)) }
        if let d = c.driftPPM { parts.append(String(format: "%+.2fppm", d)) }
        if c.segments > 1 { parts.append("\(c.segments) segments") }
        return parts.joined(separator: " ")
    }
}

struct Ports: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serial ports on this machine with their USB identity, the USB instruments a driver recognises (transport libusb), and which device uses each.")
    @OptionGroup var global: Global

    func run() throws {
        try global.output(global.call("ports"), as: [PortEntry].self) { ports in
            func hex(_ v: UInt16?) -> String { v.map { String(format: "%04x", $0) } ?? "-" }
            return table(
                ["PORT", "TRANSPORT", "VID:PID", "SERIAL", "USB PORT", "MANUFACTURER", "PRODUCT", "DEVICE", "LOOKS LIKE"],
                ports.map { e in
                    [e.port.name, e.port.transport, e.port.vendorID == nil ? "-" : "\(hex(e.port.vendorID)):\(hex(e.port.productID))", e.port.serialNumber ?? "-",
                     e.port.usbPortPath ?? "-", e.port.manufacturer ?? "-", e.port.product ?? "-", e.device ?? "-", e.recognisedAs ?? "-"]
                })
        }
    }
}

/// Parses "12.5mm", "300um", "300µm" or a bare number (in `defaultUnit`).
func length(_ text: String, defaultUnit: String) throws -> (Double, String) {
    for unit in ["mm", "um", "µm"] where text.hasSuffix(unit) {
        guard let v = Double(text.dropLast(unit.count)) else { break }
        return (v, unit == "µm" ? "um" : unit)
    }
    guard let v = Double(text) else { throw ValidationError("\(text): expected a length like 12.5mm or 300um") }
    return (v, defaultUnit)
}

struct Move: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Move a stage axis to a position (or by a distance with --relative). Waits for the command to be accepted, not for the move to end.")
    @OptionGroup var global: Global
    @Argument(help: "Device name.") var device: String
    @Argument(help: "Position with a unit: 12.5mm, 300um (a bare number uses --unit).") var position: String
    @Option(name: .long, help: "Axis (1…); 0 or absent for a single-axis device.") var axis: Int?
    @Option(name: .long, help: "Unit of a bare number: mm or um.") var unit = "mm"
    @Flag(name: .long, help: "Move by POSITION instead of to it.") var relative = false

    func run() throws {
        let (value, u) = try length(position, defaultUnit: unit)
        var args: [String: JSONValue] = ["device": .string(device), "position": .number(value), "unit": .string(u), "relative": .bool(relative)]
        if let axis { args["axis"] = .number(Double(axis)) }
        try global.output(global.call("move", args), as: DeviceCommandResult.self) { r in
            "\(r.device): moving axis \(r.values["axis"].map { "\($0)" } ?? "?") \(relative ? "by" : "to") \(r.values["target_um"].map { "\($0)" } ?? "?") um (\(r.values["microsteps"].map { "\($0)" } ?? "?") microsteps)\n"
        }
    }
}

struct Home: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Home a stage (all axes, or one with --axis).")
    @OptionGroup var global: Global
    @Argument(help: "Device name.") var device: String
    @Option(name: .long, help: "Axis (1…); all axes when absent.") var axis: Int?

    func run() throws {
        var args: [String: JSONValue] = ["device": .string(device)]
        if let axis { args["axis"] = .number(Double(axis)) }
        try global.output(global.call("home", args), as: DeviceCommandResult.self) { r in "\(r.device): homing\n" }
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start, stop and list runs.", subcommands: [Start.self, Stop.self, List.self])

    struct Start: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start recording a run.",
            discussion: """
                Experiment metadata comes from --meta-file (TOML or JSON) and --meta PATH=VALUE (a dotted path; the value is read as JSON \
                when it parses, e.g. 1.0, true, ["EC","DMC"], else as a string). It is checked against the schema \
                (`operandod --metadata-reference`); unknown fields are kept. --duration checks the expected data against the free space.
                """)
        @OptionGroup var global: Global
        @Argument(help: "Run name (used in the run directory's name).") var name: String
        @Option(name: .long, help: "Experiment metadata file, TOML or JSON.") var metaFile: String?
        @Option(name: .long, help: "Metadata PATH=VALUE, e.g. cell.format=\"CR2032\" (repeatable; overrides the file).") var meta: [String] = []
        @Option(name: .long, help: "Planned duration (90m, 24h, 3600s): refused when the disk cannot hold it.") var duration: String?
        @Flag(name: .long, help: "Start even if the planned duration does not fit on the disk.") var force = false

        func run() throws {
            var metadata = JSONValue.object([:])
            if let metaFile { metadata = try loadMetadataFile(metaFile) }
            for m in meta {
                guard let eq = m.firstIndex(of: "="), eq != m.startIndex else {
                    throw ValidationError("--meta \(m): expected PATH=VALUE, e.g. electrolyte.salt=LiPF6")
                }
                let text = String(m[m.index(after: eq)...])
                let value = (try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))) ?? .string(text)
                metadata.set(path: String(m[..<eq]), to: value)
            }
            var args: [String: JSONValue] = ["name": .string(name), "meta": metadata]
            if let duration {
                guard let seconds = parseDuration(duration) else { throw ValidationError("--duration \(duration): expected e.g. 90m, 24h, 3600s or 3600") }
                args["duration_s"] = .number(seconds)
            }
            if force { args["force"] = .bool(true) }
            try global.output(global.call("run.start", args), as: RunInfo.self) { r in
                var out = "recording run \(r.name) (\(r.id))\ninto \(r.directory)\n"
                if let rate = r.estimatedBytesPerSecond, let hours = r.hoursOfSpace {
                    out += String(format: "expected %.2f MiB/s; the free space lasts about %.1f h\n", rate / 1_048_576, hours)
                }
                for w in r.warnings ?? [] { out += "warning: \(w)\n" }
                return out
            }
        }
    }

    struct Stop: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop the run: drain every ring, sync, close. Prints per-stream counts.")
        @OptionGroup var global: Global
        @Option(name: .long, help: "Why the run stopped (kept in the run).") var reason: String?

        func run() throws {
            var args: [String: JSONValue] = [:]
            if let reason { args["reason"] = .string(reason) }
            try global.output(global.call("run.stop", args, timeout: .seconds(600)), as: RunStopResult.self) { r in
                "run \(r.run.name) \(r.run.state) after \(duration(r.run.elapsedSeconds ?? 0)): \(r.run.directory)\n\n"
                    + table(["STREAM", "PRODUCED", "WRITTEN", "DROPPED", "BYTES"], r.streams.map { [$0.name, "\($0.produced)", "\($0.written)", "\($0.dropped)", bytes($0.bytes)] })
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Runs in the data directory.")
        @OptionGroup var global: Global

        func run() throws {
            try global.output(global.call("run.list"), as: [RunListEntry].self) { runs in
                table(["RUN", "STATE", "STARTED", "DURATION", "RECORDS", "DROPPED", "SIZE", "DIRECTORY"],
                      runs.map { [$0.run.name, $0.run.state, $0.run.startedAt, $0.run.elapsedSeconds.map(duration) ?? "-", $0.records.map { "\($0)" } ?? "-", $0.dropped.map { "\($0)" } ?? "-", $0.bytes.map(bytes) ?? "-", $0.run.directory] })
            }
        }
    }
}

struct Mark: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Put a marker on the timeline (kept in the run).")
    @OptionGroup var global: Global
    @Argument(help: "Marker text.") var text: [String]

    func run() throws {
        try global.output(global.call("mark", ["text": .string(text.joined(separator: " "))]), as: MarkResult.self) { m in
            "marked at host time \(m.hostTimeNanoseconds) ns\n"
        }
    }
}

struct Tail: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the newest records of a stream (`devices` lists streams).")
    @OptionGroup var global: Global
    @Argument(help: "Stream name, e.g. pstat/ei.") var stream: String
    @Flag(name: .shortAndLong, help: "Keep printing new records until interrupted.") var follow = false
    @Option(name: .shortAndLong, help: "Stop after this many records (with --follow).") var count: Int?

    func run() throws {
        var after: UInt64?
        var printed = 0
        var header = false
        repeat {
            var args: [String: JSONValue] = ["stream": .string(stream)]
            if let after { args["after"] = .number(Double(after)) }
            let value = try global.call("tail", args)
            let result = try value.decode(TailResult.self)
            if global.json {
                printJSON(value)
            } else {
                if !header {
                    print(([ "SEQ", "HOST_TIME_NS", "DEVICE_TIME_NS"] + (result.kind == "events" ? ["EVENT"] : result.kind == "frames" ? ["BYTES", "FIRST VALUES"] : result.columns)).joined(separator: "\t"))
                    header = true
                }
                for e in result.entries {
                    var cols = ["\(e.sequence)", "\(e.hostTimeNanoseconds)", e.deviceTimeNanoseconds.map { "\($0)" } ?? "-"]
                    switch result.kind {
                    case "events":
                        let o = e.event?.objectValue
                        cols.append("[\(o?["kind"]?.stringValue ?? "?")] \(o?["source"]?.stringValue ?? "?"): \(o?["message"]?.stringValue ?? "")")
                    case "frames":
                        cols.append("\(e.payloadBytes)")
                        cols.append((e.values ?? []).prefix(8).map { String(format: "%g", $0) }.joined(separator: " ") + " …")
                    default:
                        cols += (e.values ?? []).map { String(format: "%.6g", $0) }
                    }
                    print(cols.joined(separator: "\t"))
                    printed += 1
                    if let count, printed >= count { return }
                }
            }
            after = result.next ?? after
            if follow { Thread.sleep(forTimeInterval: 0.2) }
        } while follow
    }
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Export a run to NeXus/HDF5 (one file) or CSV (one file per stream), every time on the common timeline.",
        discussion: """
            Works for complete, recovered and still-recording runs (what is on disk so far). RUN is a run's name or id (the daemon \
            says where it is) or a run directory; the export itself runs here, reading the run's files, with a progress bar on a terminal.
            """)
    enum Format: String, ExpressibleByArgument, CaseIterable { case nexus, csv }
    @OptionGroup var global: Global
    @Argument(help: ArgumentHelp("Run name, id, or directory.", valueName: "run")) var runName: String
    @Option(name: .long, help: "nexus (HDF5, .nxs) or csv.") var format: Format = .nexus
    @Option(name: .long, help: "The .nxs file, or the directory for the CSV files.") var output: String

    func run() throws {
        let directory: String
        if FileManager.default.fileExists(atPath: runName + "/run.json") {
            directory = runName
        } else {
            let runs = try global.call("run.list").decode([RunListEntry].self)
            let matches = runs.filter { $0.run.id == runName || ($0.run.directory as NSString).lastPathComponent == runName || $0.run.name == runName }
            guard let first = matches.first else { fail("no run \"\(runName)\"; `operandoctl run list` shows the runs", code: 1) }
            guard matches.count == 1 else {
                fail("\(matches.count) runs are named \"\(runName)\" (\(matches.map { ($0.run.directory as NSString).lastPathComponent }.joined(separator: ", "))); give the directory name or the run id", code: 1)
            }
            directory = first.run.directory
        }
        let bar = ProgressBar(label: "export \(format.rawValue)")
        let summary: ExportSummary
        do {
            let reader = try RunReader(directory: directory)
            switch format {
            case .nexus: summary = try NeXusExport.write(reader, to: output, progress: bar.update)
            case .csv: summary = try CSVExport.write(reader, to: output, progress: bar.update)
            }
        } catch {
            bar.finish()
            fail("export of \(runName) failed: \(error)", code: 1)
        }
        bar.finish()
        try global.output(try JSONValue(encoding: summary), as: ExportSummary.self) { s in
            var out = "exported \(directory) to \(s.path) (\(bytes(UInt64(s.bytes)))) in \(String(format: "%.1f", bar.elapsed)) s\n"
            out += table(["STREAM", "RECORDS", "ROWS", "OUTPUT"], s.streams.map { [$0.name, "\($0.records)", "\($0.rows)", $0.output] })
            out += "\(s.events) events, \(s.clockObservations) clock observations"
            if s.damagedRegions > 0 || s.tornTailBytes > 0 { out += "; skipped \(s.damagedRegions) damaged regions and \(s.tornTailBytes) torn bytes" }
            return out + "\n"
        }
    }
}

/// A progress bar on stderr when it is a terminal (a line every 10 % otherwise).
final class ProgressBar {
    let label: String
    let start = ContinuousClock.now
    private var last = ContinuousClock.now
    private var lastDecile = -1
    private let terminal = isatty(STDERR_FILENO) == 1

    init(label: String) { self.label = label }

    var elapsed: Double {
        let d = ContinuousClock.now - start
        return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    func update(_ fraction: Double) {
        let f = min(max(fraction, 0), 1)
        if terminal {
            guard ContinuousClock.now - last > .milliseconds(100) || f >= 1 else { return }
            last = ContinuousClock.now
            let width = 30
            let done = Int(f * Double(width))
            let line = "\r\(label) [" + String(repeating: "#", count: done) + String(repeating: "-", count: width - done) + String(format: "] %3.0f%%  %.1f s", f * 100, elapsed)
            FileHandle.standardError.write(Data(line.utf8))
        } else {
            let decile = Int(f * 10)
            guard decile > lastDecile else { return }
            lastDecile = decile
            FileHandle.standardError.write(Data("\(label): \(decile * 10)%\n".utf8))
        }
    }

    func finish() {
        if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}

struct Recover: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Close a run the daemon never closed (killed, crashed, power lost): cut torn tails, rebuild its counts, mark it recovered.",
        discussion: "The daemon does this by itself at start (recover_on_start). RUN is a run's name or id (asks the daemon), or a run directory (done here).")
    @OptionGroup var global: Global
    @Argument(help: ArgumentHelp("Run name, id, or directory.", valueName: "run")) var runName: String
    @Flag(name: .long, help: "Re-verify a run that is already closed and rewrite its counts.") var force = false

    func run() throws {
        let value: JSONValue
        if FileManager.default.fileExists(atPath: runName + "/run.json") {
            do {
                let m = try RunRecovery.recover(runName, by: "operandoctl recover", at: MonotonicRawClock().realtimeAnchor(), force: force)
                let entry = RunListEntry(
                    run: RunInfo(name: m.name, id: m.id, directory: runName, state: m.state.rawValue, startedAt: m.startedAt, stoppedAt: m.stoppedAt,
                                 elapsedSeconds: m.stopAnchor.map { $0.host.seconds(since: m.startAnchor.host) }),
                    records: m.summary.map { $0.reduce(0) { $0 + $1.written } }, bytes: m.summary.map { $0.reduce(0) { $0 + $1.bytes } },
                    dropped: m.summary.map { $0.reduce(0) { $0 + $1.dropped } })
                value = try JSONValue(encoding: entry)
            } catch {
                fail("\(error)", code: 1)
            }
        } else {
            var args: [String: JSONValue] = ["run": .string(runName)]
            if force { args["force"] = .bool(true) }
            value = try global.call("run.recover", args, timeout: .seconds(3600))
        }
        try global.output(value, as: RunListEntry.self) { e in
            "run \(e.run.name) \(e.run.state): \(e.records ?? 0) records kept, \(e.dropped ?? 0) missing (dropped, damaged or torn), in \(e.run.directory)\n"
        }
    }
}

struct Scan: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start, stop, pause or resume an AFM/SPM scan (a stimulus event on the timeline).")
    enum Action: String, ExpressibleByArgument, CaseIterable { case start, stop, pause, resume }
    @OptionGroup var global: Global
    @Argument(help: "Device name.") var device: String
    @Argument(help: "start, stop, pause or resume.") var action: Action
    @Option(name: .long, help: "up or down (start only).") var direction: String?

    func run() throws {
        var args: [String: JSONValue] = ["device": .string(device), "action": .string(action.rawValue)]
        if let direction { args["direction"] = .string(direction) }
        try global.output(global.call("scan", args), as: DeviceCommandResult.self) { r in "\(r.device): scan \(action.rawValue)\n" }
    }
}

struct Bias: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Set an SPM's tip–sample bias (V); it is read back and recorded as a stimulus.")
    @OptionGroup var global: Global
    @Argument(help: "Device name.") var device: String
    @Argument(help: "Bias in volts.") var volts: Double

    func run() throws {
        try global.output(global.call("bias", ["device": .string(device), "volts": .number(volts)]), as: DeviceCommandResult.self) { r in
            "\(r.device): bias set to \(r.values["set_v"].map { "\($0)" } ?? "?") V, reads \(r.values["read_v"].map { "\($0)" } ?? "?") V\n"
        }
    }
}

struct TechniqueCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "technique",
        abstract: "Start a technique or a protocol on a potentiostat from a TOML or JSON file.",
        discussion: """
            The file describes one technique (kind = "ocp", "ca", "cp", "cv", "lsv", "gcd", "hold", "eis", with its values) or a \
            protocol (kind = "protocol", steps = [...], where a step is a technique or {repeat = N, steps = [...]}). The driver \
            turns it into MethodSCRIPT; every step is recorded as a stimulus. See README, "Techniques".
            """)
    @OptionGroup var global: Global
    @Argument(help: "Device name.") var device: String
    @Argument(help: "The technique or protocol, TOML or JSON.") var file: String

    func run() throws {
        let technique = try loadMetadataFile(file)  // any TOML/JSON document → a JSON tree
        guard case .object(let o) = technique else { throw ValidationError("\(file): expected a table/object with a kind") }
        try global.output(global.call("technique", ["device": .string(device), "technique": .object(o)], timeout: .seconds(30)), as: DeviceCommandResult.self) { r in
            "\(r.device): started \(r.values["technique"].map { "\($0)" } ?? "?") (\(r.values["steps"].map { "\($0)" } ?? "?") steps)\n"
        }
    }
}

struct Abort: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Abort the technique a potentiostat is running (recorded as an event).")
    @OptionGroup var global: Global
    @Argument(help: "Device name.") var device: String

    func run() throws {
        try global.output(global.call("abort", ["device": .string(device)]), as: DeviceCommandResult.self) { r in
            r.values["aborted"] == .bool(true) ? "\(r.device): aborted\n" : "\(r.device): nothing was running\n"
        }
    }
}

struct Tip: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Move an SPM's tip to (X, Y) nm (a stimulus), or read where it is.",
        discussion: "Negative values: --y-nm=-20.")
    @OptionGroup var global: Global
    @Argument(help: "Device name.") var device: String
    @Option(name: .long, help: "X in nm (with --y-nm; neither reads the position).") var xNm: Double?
    @Option(name: .long, help: "Y in nm.") var yNm: Double?

    func validate() throws {
        if (xNm == nil) != (yNm == nil) { throw ValidationError("give --x-nm and --y-nm, or neither to read the position") }
    }

    func run() throws {
        var args: [String: JSONValue] = ["device": .string(device)]
        if let xNm, let yNm {
            args["x_nm"] = .number(xNm)
            args["y_nm"] = .number(yNm)
        }
        try global.output(global.call("tip", args), as: DeviceCommandResult.self) { r in
            "\(r.device): tip at (\(r.values["x_nm"].map { "\($0)" } ?? "?"), \(r.values["y_nm"].map { "\($0)" } ?? "?")) nm\n"
        }
    }
}

struct Trigger: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Drive a trigger edge: a device's serial port line (DTR, RTS) or its own output (gpioN); every edge is recorded as a stimulus with its time and uncertainty.",
        discussion: "Asserted is the line's active state: +V on RS-232, LOW on the DTR#/RTS# pins of TTL-level USB cables (active-low), high on a GPIO pin.")
    @OptionGroup var global: Global
    @Argument(help: "Device name (a device on a serial port).") var device: String
    @Option(name: .long, help: "dtr or rts (the serial port), or gpio0… (the instrument's outputs).") var line = "dtr"
    @Option(name: .long, help: "Assert, hold this long (ms), release: two edges.") var pulseMs: Double?
    @Flag(name: .long, help: "Assert the line and leave it (one edge).") var assert = false
    @Flag(name: .long, help: "Release the line and leave it (one edge).") var release = false

    func validate() throws {
        if assert && release { throw ValidationError("--assert and --release exclude each other") }
        if (assert || release) && pulseMs != nil { throw ValidationError("--pulse-ms makes two edges; leave out --assert/--release") }
    }

    func run() throws {
        var args: [String: JSONValue] = ["device": .string(device), "line": .string(line)]
        if assert || release { args["asserted"] = .bool(assert) }
        if let pulseMs { args["pulse_ms"] = .number(pulseMs) }
        try global.output(global.call("trigger", args), as: DeviceCommandResult.self) { r in
            "\(r.device): \(line.uppercased()) \(r.values["edges"].map { "\($0)" } ?? "?") edge(s), recorded\n"
        }
    }
}

struct Refit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Refit every device clock of a run from its stored observations; writes clock.json into the run.",
        discussion: "RUN is a run's name or id (asks the daemon), or a run directory (read here, e.g. a copy on another machine).")
    @OptionGroup var global: Global
    @Argument(help: ArgumentHelp("Run name, id, or directory.", valueName: "run")) var runName: String

    func run() throws {
        let value: JSONValue
        if let reader = try localRun(runName) {
            do {
                let clocks = try RunClocks.fit(reader)
                value = try JSONValue(encoding: RefitResult(run: reader.manifest.name, file: try clocks.write(into: reader.directory), devices: clocks.summary))
            } catch {
                fail("refit of \(runName) failed: \(error)", code: 1)
            }
        } else {
            value = try global.call("run.refit", ["run": .string(runName)], timeout: .seconds(600))
        }
        try global.output(value, as: RefitResult.self) { r in
            "run \(r.run): clocks written to \(r.file)\n"
                + table(
                    ["DEVICE", "MODEL", "OBSERVATIONS", "SEGMENTS", "RESETS", "DRIFT", "UNCERTAINTY (MEDIAN)", "UNCERTAINTY (MAX)"],
                    r.devices.map {
                        [$0.device, $0.model, "\($0.observations)", "\($0.segments)", "\($0.resets)", $0.driftPPM.map { String(format: "%+.3f ppm", $0) } ?? "-",
                         $0.uncertaintyMedianNs.map(microseconds) ?? "-", $0.uncertaintyMaxNs.map(microseconds) ?? "-"]
                    })
        }
    }
}

struct Align: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "For each response (spectrum, frame, …) of a run, the stimulus applied while it was taken.",
        discussion: """
            Device clocks are refitted from the run's stored observations. Each row: the response's interval on the common timeline (s since \
            the run's start), its uncertainty, and the stimulus device's fields over it (mean, min, max), the charge passed, and the \
            stimulus events. RUN is a run's name or id (asks the daemon), or a run directory (read here).
            """)
    @OptionGroup var global: Global
    @Argument(help: ArgumentHelp("Run name, id, or directory.", valueName: "run")) var runName: String
    @Option(name: .long, help: "The response stream, e.g. xrf/spectrum.") var response: String
    @Option(name: .long, help: "The stimulus device, e.g. pstat.") var stimulus: String
    @Flag(name: .long, help: "Print CSV (units in the header) instead of a table.") var csv = false

    func run() throws {
        let value: JSONValue
        if let reader = try localRun(runName) {
            do {
                value = try JSONValue(encoding: Alignment.compute(reader, response: response, stimulus: stimulus))
            } catch {
                fail("\(error)", code: 1)
            }
        } else {
            value = try global.call("run.align", ["run": .string(runName), "response": .string(response), "stimulus": .string(stimulus)], timeout: .seconds(600))
        }
        if csv && !global.json {
            print(try value.decode(AlignmentTable.self).csv(), terminator: "")
            return
        }
        try global.output(value, as: AlignmentTable.self) { t in
            var header = t.csvHeader
            header.removeLast()  // the last stimulus's text is too wide for a table; --csv has it
            let rows = t.rows.map { Array(t.csvFields($0).dropLast()) }
            return "run \(t.run): \(t.response) (clock: \(t.responseClock)) against \(t.stimulusStream) (clock: \(t.stimulusClock)); \(t.rows.count) responses\n"
                + table(header, rows)
        }
    }
}

struct Sim: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Pull or plug the cable of a simulated device (to rehearse disconnects).", subcommands: [Unplug.self, Replug.self])

    struct Unplug: ParsableCommand {
        @OptionGroup var global: Global
        @Argument var device: String
        func run() throws { try global.output(global.call("sim.unplug", ["device": .string(device)]), as: JSONValue.self) { "\($0)\n" } }
    }

    struct Replug: ParsableCommand {
        @OptionGroup var global: Global
        @Argument var device: String
        func run() throws { try global.output(global.call("sim.replug", ["device": .string(device)]), as: JSONValue.self) { "\($0)\n" } }
    }
}
