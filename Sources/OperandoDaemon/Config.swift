import Foundation
import OperandoCore
import OperandoStore
import OperandoVirtualCell
import TOMLKit

/// How a device is reached.
public enum TransportSpec: Sendable, Equatable, CustomStringConvertible {
    /// The driver talks to its simulator in process, over an in-memory link.
    case simulated
    /// A TCP connection (`tcp:HOST:PORT`).
    case tcp(host: String, port: UInt16)
    /// A serial port by path (`serial:/dev/ttyUSB0`) or by USB identity
    /// (`serial:usb:0403:6001[:SERIAL]`, `serial:serial=SERIAL`, `serial:port=1-1.2`).
    case serial(SerialPortMatch)
    /// A USB device's bulk endpoints through libusb: `usb:VID:PID[:SERIAL]` or
    /// `usb:VID:PID@BUS-PORT` (the sysfs port path, e.g. `1-1.2`).
    case usb(USBDeviceMatch)

    public var description: String {
        switch self {
        case .simulated: "simulated"
        case .tcp(let h, let p): "tcp:\(h):\(p)"
        case .serial(let m):
            switch m {
            case .path(let p): "serial:\(p)"
            case .usb(let v, let p, let sn): "serial:usb:" + String(format: "%04x:%04x", v, p) + (sn.map { ":\($0)" } ?? "")
            case .serialNumber(let sn): "serial:serial=\(sn)"
            case .usbPort(let p): "serial:port=\(p)"
            }
        case .usb(let m): "usb:" + String(format: "%04x:%04x", m.vendor, m.product) + (m.serialNumber.map { ":\($0)" } ?? "") + (m.portPath.map { "@\($0)" } ?? "")
        }
    }

    struct Invalid: Error { var message: String }

    static func parse(_ text: String) -> Result<TransportSpec, Invalid> {
        if text == "simulated" { return .success(.simulated) }
        if text.hasPrefix("tcp:") {
            let rest = text.dropFirst(4)
            guard let colon = rest.lastIndex(of: ":"), let port = UInt16(rest[rest.index(after: colon)...]), port > 0, colon > rest.startIndex else {
                return .failure(Invalid(message: "expected tcp:HOST:PORT, e.g. \"tcp:127.0.0.1:6501\""))
            }
            return .success(.tcp(host: String(rest[..<colon]), port: port))
        }
        if text.hasPrefix("serial:") {
            let rest = String(text.dropFirst(7))
            if rest.hasPrefix("/") { return .success(.serial(.path(rest))) }
            if rest.hasPrefix("serial="), rest.count > 7 { return .success(.serial(.serialNumber(String(rest.dropFirst(7))))) }
            if rest.hasPrefix("port="), rest.count > 5 { return .success(.serial(.usbPort(String(rest.dropFirst(5))))) }
            if rest.hasPrefix("usb:") {
                let parts = rest.dropFirst(4).split(separator: ":", maxSplits: 2).map(String.init)
                if parts.count >= 2, let v = UInt16(parts[0], radix: 16), let p = UInt16(parts[1], radix: 16) {
                    return .success(.serial(.usb(vendor: v, product: p, serialNumber: parts.count == 3 ? parts[2] : nil)))
                }
            }
            return .failure(Invalid(message: "expected serial:/dev/NAME, serial:usb:VID:PID[:SERIAL], serial:serial=SERIAL or serial:port=BUS-PORT, e.g. \"serial:/dev/ttyUSB0\" or \"serial:usb:0403:6001:A1B2C3\""))
        }
        if text.hasPrefix("usb:") {
            var rest = Substring(text.dropFirst(4))
            var port: String?
            if let at = rest.firstIndex(of: "@") {
                port = String(rest[rest.index(after: at)...])
                rest = rest[..<at]
            }
            let parts = rest.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
            guard parts.count >= 2, parts[0].count == 4, parts[1].count == 4, let v = UInt16(parts[0], radix: 16), let p = UInt16(parts[1], radix: 16),
                parts.count == 2 || !parts[2].isEmpty, port == nil || (port!.first?.isNumber == true && port!.contains("-"))
            else {
                return .failure(Invalid(message: "expected usb:VID:PID[:SERIAL] or usb:VID:PID@BUS-PORT with 4-digit hex ids, e.g. \"usb:10c4:842a\", \"usb:10c4:842a:DP5-12345\" or \"usb:10c4:842a@1-1.2\""))
            }
            return .success(.usb(USBDeviceMatch(vendor: v, product: p, serialNumber: parts.count == 3 ? parts[2] : nil, portPath: port)))
        }
        return .failure(Invalid(message: "expected \"simulated\", \"tcp:HOST:PORT\", \"serial:/dev/…\" or \"usb:VID:PID[:SERIAL]\""))
    }
}

public struct DeviceConfig: Sendable {
    public var name: String
    public var driver: String
    public var transport: TransportSpec
    public var ringBytes: Int?
    public var overflow: OverflowPolicy
    public var settings: DeviceSettings
    /// Line settings for serial transports: the driver's defaults with this device's overrides.
    public var serial: SerialSettings
    /// The device clock of this device's simulator (`transport = "simulated"` only).
    public var simulatedClock: SimulatedDeviceClock
    /// Overrides the driver's bound on the constant one-way delay of its stamps, ns.
    public var clockLatencyMaxNs: Int64?
}

public struct DaemonConfig: Sendable {
    public var path: String
    /// The file exactly as read, for run provenance.
    public var text: String
    public var socketPath: String
    public var dataDirectory: String
    public var memoryBudgetBytes: Int
    public var syncInterval: Duration
    public var segmentBytes: Int
    public var segmentDuration: Duration
    public var onWriteError: Recorder.WriteErrorPolicy
    public var resumeFreeBytes: Int
    public var recoverOnStart: Bool
    public var requireMetadata: Bool
    public var anchorInterval: Duration
    public var defaultRingBytes: Int
    public var reconnectMax: Duration
    public var logLevel: String
    public var timeScale: Double
    public var initialStateOfCharge: Double
    public var devices: [DeviceConfig]
}

/// One configuration key: where it lives, its default, its bounds and what it means. Every key
/// the daemon reads is declared here; the README's reference is printed from this table by
/// `operandod --config-reference`.
public struct ConfigKey: Sendable {
    public enum Kind: Sendable {
        case integer(ClosedRange<Int>)
        case number(ClosedRange<Double>)
        case string
        case bool
        case choice([String])
        case transport
        case table
    }

    public var table: String
    public var key: String
    public var kind: Kind
    /// The default as written in TOML; nil when required.
    public var defaultValue: String?
    public var doc: String

    public static let all: [ConfigKey] = [
        ConfigKey(table: "daemon", key: "socket", kind: .string, defaultValue: "\"/run/operandod/control.sock\"", doc: "Control socket path (created 0660). `--socket` overrides it."),
        ConfigKey(table: "daemon", key: "data_dir", kind: .string, defaultValue: "\"/var/lib/operandod\"", doc: "Where runs are stored (`runs/<time>-<name>/`). `--data-dir` overrides it."),
        ConfigKey(table: "daemon", key: "memory_budget_mb", kind: .integer(1...65536), defaultValue: "256", doc: "All ring buffers together may use at most this much memory (MiB), allocated at start."),
        ConfigKey(table: "daemon", key: "ring_mb", kind: .integer(1...16384), defaultValue: "16", doc: "Ring size per stream (MiB) unless a device sets its own."),
        ConfigKey(table: "daemon", key: "sync_interval_ms", kind: .integer(10...60000), defaultValue: "500", doc: "fdatasync at least this often while recording: the most data (ms) lost on power failure."),
        ConfigKey(table: "daemon", key: "segment_mb", kind: .integer(1...65536), defaultValue: "256", doc: "Start a new segment file when the current one reaches this size (MiB)."),
        ConfigKey(table: "daemon", key: "segment_max_s", kind: .integer(10...86400), defaultValue: "3600", doc: "Start a new segment file when the current one is this old (s), whatever its size."),
        ConfigKey(table: "daemon", key: "on_write_error", kind: .choice(Recorder.WriteErrorPolicy.allCases.map(\.rawValue)), defaultValue: "\"pause\"", doc: "When the disk is full or a write fails: `pause` (close the segment on its last whole record, raise an alarm, count what arrives meanwhile as dropped, resume in a new segment once `resume_free_mb` are free) or `stop` (close the run as failed). The daemon stays up either way."),
        ConfigKey(table: "daemon", key: "resume_free_mb", kind: .integer(1...1_048_576), defaultValue: "64", doc: "Free space (MiB) the data directory needs before a paused run resumes; checked every 5 s."),
        ConfigKey(table: "daemon", key: "require_metadata", kind: .bool, defaultValue: "false", doc: "Refuse `run start` without experiment metadata (see the metadata schema). Metadata that is given is always checked."),
        ConfigKey(table: "daemon", key: "recover_on_start", kind: .bool, defaultValue: "true", doc: "At start, close runs a previous daemon left recording (killed, crashed, power lost): cut torn tails, rebuild counts, mark them `recovered`."),
        ConfigKey(table: "daemon", key: "anchor_interval_s", kind: .integer(1...3600), defaultValue: "60", doc: "Record a host-to-UTC clock anchor this often during a run (s)."),
        ConfigKey(table: "daemon", key: "reconnect_max_s", kind: .integer(1...600), defaultValue: "10", doc: "Longest wait between reconnection attempts to a lost device (s); backoff starts at 0.1 s."),
        ConfigKey(table: "daemon", key: "log_level", kind: .choice(["trace", "debug", "info", "notice", "warning", "error", "critical"]), defaultValue: "\"info\"", doc: "Least severe message logged on stderr."),
        ConfigKey(table: "simulation", key: "time_scale", kind: .number(1...1_000_000), defaultValue: "600", doc: "Cell seconds per host second for the shared virtual cell (simulated devices only)."),
        ConfigKey(table: "simulation", key: "initial_soc", kind: .number(0...1), defaultValue: "0.1", doc: "State of charge of the virtual cell at start."),
        ConfigKey(table: "device", key: "name", kind: .string, defaultValue: nil, doc: "Unique device name: letters, digits, `-`, `_`. Streams are named `<name>/<stream>`."),
        ConfigKey(table: "device", key: "driver", kind: .choice(DriverRegistry.names), defaultValue: nil, doc: "Which driver speaks to it."),
        ConfigKey(table: "device", key: "transport", kind: .transport, defaultValue: nil, doc: "`simulated`, `tcp:HOST:PORT`, or a serial port: `serial:/dev/ttyUSB0` (any path, pseudo-terminals too), `serial:usb:VID:PID[:SERIAL]`, `serial:serial=SERIAL`, `serial:port=BUS-PORT` (sysfs USB port path, e.g. `1-1.2`); or a USB instrument's bulk endpoints through libusb: `usb:VID:PID`, `usb:VID:PID:SERIAL`, `usb:VID:PID@BUS-PORT` (packet drivers such as amptek-dp5). Identities survive re-enumeration."),
        ConfigKey(table: "device", key: "baud", kind: .integer(50...4_000_000), defaultValue: "the driver's", doc: "Serial baud rate (Zaber ASCII: 115200)."),
        ConfigKey(table: "device", key: "data_bits", kind: .integer(5...8), defaultValue: "8", doc: "Serial data bits."),
        ConfigKey(table: "device", key: "parity", kind: .choice(SerialSettings.Parity.allCases.map(\.rawValue)), defaultValue: "\"none\"", doc: "Serial parity."),
        ConfigKey(table: "device", key: "stop_bits", kind: .integer(1...2), defaultValue: "1", doc: "Serial stop bits."),
        ConfigKey(table: "device", key: "flow_control", kind: .choice(SerialSettings.FlowControl.allCases.map(\.rawValue)), defaultValue: "\"none\"", doc: "Serial flow control (DTR/DSR is not supported by libserialport on Linux)."),
        ConfigKey(table: "device", key: "dtr", kind: .bool, defaultValue: "true", doc: "Drive DTR high once the port is open (some bridges power the device from it)."),
        ConfigKey(table: "device", key: "rts", kind: .bool, defaultValue: "true", doc: "Drive RTS high once the port is open (ignored with RTS/CTS flow control)."),
        ConfigKey(table: "device", key: "ring_mb", kind: .integer(1...16384), defaultValue: "[daemon] ring_mb", doc: "Ring size for each of this device's streams (MiB)."),
        ConfigKey(table: "device", key: "overflow", kind: .choice(OverflowPolicy.allCases.map(\.rawValue)), defaultValue: "\"block\"", doc: "When a ring is full: `block` the device thread, `drop-oldest` or `drop-newest`. Drops are counted and reported."),
        ConfigKey(table: "device", key: "clock_latency_max_us", kind: .integer(0...1_000_000), defaultValue: "the driver's (1000)", doc: "Devices that only stamp what they send: the most the constant delay from the device's stamp to the host's read can be (µs). A one-way stream cannot measure it; half is subtracted from arrivals and half added to every uncertainty."),
        ConfigKey(table: "device", key: "sim_clock_drift_ppm", kind: .number(-1000...1000), defaultValue: "25", doc: "Simulated devices only: how fast the simulator's device clock runs relative to the host (ppm)."),
        ConfigKey(table: "device", key: "sim_clock_offset_s", kind: .number(0...1e9), defaultValue: "1000", doc: "Simulated devices only: the simulator's device clock at host time 0 (s), i.e. device = offset + host · (1 + drift)."),
        ConfigKey(table: "device", key: "settings", kind: .table, defaultValue: "{}", doc: "Driver settings, e.g. `rate_hz`, `current_a` and `clock_query_ms` (demo-potentiostat: bracketed clock queries every N ms, 0 = off; default 1000), `channels` and `interval_ms` (demo-xrf); see README, Drivers, for zaber-ascii, nanonis-spm, palmsens-methodscript and amptek-dp5."),
    ]
}

/// A configuration problem: file, line (when known), key, and what was expected.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public var file: String
    public var line: Int?
    public var key: String
    public var message: String

    public var description: String {
        "\(file)\(line.map { ":\($0)" } ?? ""): \(key.isEmpty ? "" : "\(key): ")\(message)"
    }
}

/// Loads and validates a configuration file. Every problem found is reported, not just the first.
public enum ConfigLoader {
    public static func load(path: String) throws -> DaemonConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigErrors([ConfigError(file: path, line: nil, key: "", message: "cannot read the configuration file (\(error.localizedDescription)); check the path and permissions")])
        }
        return try parse(text: text, path: path)
    }

    public static func parse(text: String, path: String) throws -> DaemonConfig {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let e as TOMLParseError {
            throw ConfigErrors([ConfigError(file: path, line: e.source.begin.line, key: "", message: "not valid TOML: \(e.description)")])
        }
        var v = Validator(path: path, locator: KeyLocator(text: text))
        let known = ["daemon", "simulation", "device"]
        for key in table.keys where !known.contains(key) {
            v.error(key, "unknown table or key; expected one of [daemon], [simulation], [[device]]")
        }
        let daemon = v.table(table, "daemon")
        let simulation = v.table(table, "simulation")
        v.checkUnknown(daemon, "daemon")
        v.checkUnknown(simulation, "simulation")

        var devices: [DeviceConfig] = []
        let defaultRingMB = v.int(daemon, "daemon", "ring_mb")
        switch table["device"] {
        case nil: break
        case let value? where value.array != nil:
            var names = Set<String>()
            for (i, item) in value.array!.enumerated() {
                let where_ = "device[\(i)]"
                guard let t = item.table else {
                    v.error(where_, "each device must be a table: write it as [[device]]")
                    continue
                }
                v.checkUnknown(t, where_, schema: "device")
                let name = v.string(t, where_, "name", schema: "device")
                if let name {
                    if !name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) || name.isEmpty {
                        v.error("\(where_).name", "\"\(name)\" must be letters, digits, '-' or '_'")
                    } else if name == "daemon" {
                        v.error("\(where_).name", "\"daemon\" is reserved for the daemon's own events")
                    } else if !names.insert(name).inserted {
                        v.error("\(where_).name", "\"\(name)\" is used by another device; names must be unique")
                    }
                }
                let driver = v.choice(t, where_, "driver", schema: "device")
                var transport = v.transport(t, where_)
                if let driver, let kind = DriverRegistry.linkKind(driver) {
                    switch (transport, kind) {
                    case (.tcp?, .packets), (.serial?, .packets):
                        if !DriverRegistry.acceptsByteStream(driver) {
                            v.error("\(where_).transport", "\(driver) exchanges packets and cannot run over a byte stream (TCP or serial); use \"simulated\"")
                            transport = nil
                        }
                    case (.usb?, .byteStream):
                        v.error("\(where_).transport", "\(driver) speaks over a byte stream and cannot run over USB bulk endpoints; use \"serial:…\" (a USB-serial bridge is a serial port) or \"tcp:HOST:PORT\"")
                        transport = nil
                    default: break
                    }
                }
                let ring = v.int(t, where_, "ring_mb", schema: "device", required: false)
                let overflow = v.choice(t, where_, "overflow", schema: "device").flatMap(OverflowPolicy.init(rawValue:)) ?? .block
                var serial = driver.flatMap { DriverRegistry.serialDefaults($0) } ?? SerialSettings()
                if let b = v.int(t, where_, "baud", schema: "device", required: false) { serial.baudRate = b }
                if let b = v.int(t, where_, "data_bits", schema: "device", required: false) { serial.dataBits = b }
                if let p = v.choice(t, where_, "parity", schema: "device").flatMap(SerialSettings.Parity.init(rawValue:)) { serial.parity = p }
                if let b = v.int(t, where_, "stop_bits", schema: "device", required: false) { serial.stopBits = b }
                if let f = v.choice(t, where_, "flow_control", schema: "device").flatMap(SerialSettings.FlowControl.init(rawValue:)) { serial.flowControl = f }
                if let d = v.bool(t, where_, "dtr") { serial.dtr = d }
                if let r = v.bool(t, where_, "rts") { serial.rts = r }
                let simulatedClock = SimulatedDeviceClock(
                    driftPPM: v.double(t, where_, "sim_clock_drift_ppm", schema: "device") ?? 25,
                    offsetNs: Int64((v.double(t, where_, "sim_clock_offset_s", schema: "device") ?? 1000) * 1e9))
                let clockLatencyMaxNs = v.int(t, where_, "clock_latency_max_us", schema: "device", required: false).map { Int64($0) * 1000 }
                var settings = DeviceSettings()
                if let s = t["settings"] {
                    if let st = s.table {
                        for k in st.keys {
                            if let x = st[k] {
                                if let b = x.bool { settings.values[k] = .bool(b) }
                                else if let n = x.int { settings.values[k] = .integer(Int64(n)) }
                                else if let d = x.double { settings.values[k] = .number(d) }
                                else if let str = x.string { settings.values[k] = .string(str) }
                                else { v.error("\(where_).settings.\(k)", "settings must be strings, numbers or booleans") }
                            }
                        }
                    } else {
                        v.error("\(where_).settings", "expected a table, e.g. [device.settings]")
                    }
                }
                if let name, let driver, let transport {
                    // Let the driver check its own settings now, so errors show before the daemon starts.
                    do {
                        _ = try DriverRegistry.makeDriver(driver, name: name, settings: settings)
                    } catch {
                        // Point at the setting the driver names, when it names one.
                        let message = "\(error)"
                        let key = settings.values.keys.sorted().first { message.contains("\($0) =") }
                        v.error("\(where_).settings" + (key.map { ".\($0)" } ?? ""), message)
                    }
                    devices.append(DeviceConfig(name: name, driver: driver, transport: transport, ringBytes: (ring ?? defaultRingMB).map { $0 << 20 }, overflow: overflow, settings: settings, serial: serial, simulatedClock: simulatedClock, clockLatencyMaxNs: clockLatencyMaxNs))
                }
            }
        case _?:
            v.error("device", "devices are declared as an array of tables: write each one as [[device]]")
        }

        let config = DaemonConfig(
            path: path, text: text,
            socketPath: v.string(daemon, "daemon", "socket") ?? ControlSocketDefaults.path,
            dataDirectory: v.string(daemon, "daemon", "data_dir") ?? "/var/lib/operandod",
            memoryBudgetBytes: (v.int(daemon, "daemon", "memory_budget_mb") ?? 256) << 20,
            syncInterval: .milliseconds(v.int(daemon, "daemon", "sync_interval_ms") ?? 500),
            segmentBytes: (v.int(daemon, "daemon", "segment_mb") ?? 256) << 20,
            segmentDuration: .seconds(v.int(daemon, "daemon", "segment_max_s") ?? 3600),
            onWriteError: v.choice(daemon, "daemon", "on_write_error").flatMap(Recorder.WriteErrorPolicy.init(rawValue:)) ?? .pause,
            resumeFreeBytes: (v.int(daemon, "daemon", "resume_free_mb") ?? 64) << 20,
            recoverOnStart: v.bool(daemon, "daemon", "recover_on_start", schema: "daemon") ?? true,
            requireMetadata: v.bool(daemon, "daemon", "require_metadata", schema: "daemon") ?? false,
            anchorInterval: .seconds(v.int(daemon, "daemon", "anchor_interval_s") ?? 60),
            defaultRingBytes: (defaultRingMB ?? 16) << 20,
            reconnectMax: .seconds(v.int(daemon, "daemon", "reconnect_max_s") ?? 10),
            logLevel: v.choice(daemon, "daemon", "log_level") ?? "info",
            timeScale: v.double(simulation, "simulation", "time_scale") ?? 600,
            initialStateOfCharge: v.double(simulation, "simulation", "initial_soc") ?? 0.1,
            devices: devices)
        let ringTotal = config.devices.reduce(0) { total, d in
            let streams = (try? DriverRegistry.makeDriver(d.driver, name: d.name, settings: d.settings).streams.count) ?? 1
            let ring = d.ringBytes ?? config.defaultRingBytes
            return total + (streams + 1) * ring + min(ring, 1 << 20)  // + its clock stream's ring
        } + config.defaultRingBytes
        if ringTotal > config.memoryBudgetBytes {
            v.error("daemon.memory_budget_mb", "the rings need \(ringTotal >> 20) MiB (each stream, an events and a clock stream per device, and the daemon's events) but the budget is \(config.memoryBudgetBytes >> 20) MiB; raise memory_budget_mb or lower ring_mb")
        }
        if !v.errors.isEmpty { throw ConfigErrors(v.errors) }
        return config
    }
}

public enum ControlSocketDefaults {
    public static let path = "/run/operandod/control.sock"
}

/// All problems found in a configuration file, one per line.
public struct ConfigErrors: Error, CustomStringConvertible, Sendable {
    public var errors: [ConfigError]
    public init(_ errors: [ConfigError]) { self.errors = errors }
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

/// Finds the line of `table.key` / `device[i].key` in TOML text written with [table] headers.
struct KeyLocator {
    private var lines: [String: Int] = [:]

    init(text: String) {
        var prefix = ""
        var arrayCounts: [String: Int] = [:]
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("[[") , let end = line.range(of: "]]") {
                let name = line[line.index(line.startIndex, offsetBy: 2)..<end.lowerBound].trimmingCharacters(in: .whitespaces)
                let i = arrayCounts[name, default: -1] + 1
                arrayCounts[name] = i
                prefix = "\(name)[\(i)]"
                lines[prefix] = n + 1
            } else if line.hasPrefix("["), let end = line.firstIndex(of: "]") {
                let name = line[line.index(after: line.startIndex)..<end].trimmingCharacters(in: .whitespaces)
                // [device.settings] after [[device]] belongs to the latest device.
                let parts = name.split(separator: ".", maxSplits: 1).map(String.init)
                if parts.count == 2, let i = arrayCounts[parts[0]] {
                    prefix = "\(parts[0])[\(i)].\(parts[1])"
                } else {
                    prefix = name
                }
                lines[prefix] = n + 1
            } else if let eq = line.firstIndex(of: "="), !line.hasPrefix("#") {
                let key = line[..<eq].trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
                lines[prefix.isEmpty ? key : "\(prefix).\(key)"] = n + 1
            }
        }
    }

    func line(_ path: String) -> Int? {
        if let l = lines[path] { return l }
        // Fall back to the enclosing table.
        var p = path
        while let dot = p.lastIndex(of: ".") {
            p = String(p[..<dot])
            if let l = lines[p] { return l }
        }
        return nil
    }
}

/// Typed, bounds-checked reads against `ConfigKey.all`, collecting errors.
struct Validator {
    let path: String
    let locator: KeyLocator
    var errors: [ConfigError] = []

    mutating func error(_ key: String, _ message: String) {
        errors.append(ConfigError(file: path, line: locator.line(key), key: key, message: message))
    }

    private func spec(_ schema: String, _ key: String) -> ConfigKey {
        ConfigKey.all.first { $0.table == schema && $0.key == key }!
    }

    mutating func table(_ root: TOMLTable, _ name: String) -> TOMLTable? {
        guard let v = root[name] else { return nil }
        guard let t = v.table else {
            error(name, "expected a table: write it as [\(name)]")
            return nil
        }
        return t
    }

    mutating func checkUnknown(_ t: TOMLTable?, _ where_: String, schema: String? = nil) {
        guard let t else { return }
        let allowed = ConfigKey.all.filter { $0.table == (schema ?? where_) }.map(\.key)
        for k in t.keys where !allowed.contains(k) {
            error("\(where_).\(k)", "unknown key; [\(schema ?? where_)] accepts \(allowed.joined(separator: ", "))")
        }
    }

    private mutating func value(_ t: TOMLTable?, _ where_: String, _ key: String, schema: String?, required: Bool) -> (any TOMLValueConvertible)? {
        let spec = spec(schema ?? where_, key)
        guard let v = t?[key] else {
            if required && spec.defaultValue == nil { error("\(where_).\(key)", "is required: \(spec.doc)") }
            return nil
        }
        return v
    }

    mutating func int(_ t: TOMLTable?, _ where_: String, _ key: String, schema: String? = nil, required: Bool = true) -> Int? {
        guard let v = value(t, where_, key, schema: schema, required: required) else { return nil }
        guard case .integer(let range) = spec(schema ?? where_, key).kind else { return nil }
        guard let i = v.int else {
            error("\(where_).\(key)", "expected a whole number in \(range.lowerBound)…\(range.upperBound), got \(v.debugDescription)")
            return nil
        }
        guard range.contains(i) else {
            error("\(where_).\(key)", "\(i) is outside \(range.lowerBound)…\(range.upperBound)")
            return nil
        }
        return i
    }

    mutating func double(_ t: TOMLTable?, _ where_: String, _ key: String, schema: String? = nil) -> Double? {
        guard let v = value(t, where_, key, schema: schema, required: true) else { return nil }
        guard case .number(let range) = spec(schema ?? where_, key).kind else { return nil }
        guard let d = v.double ?? v.int.map(Double.init) else {
            error("\(where_).\(key)", "expected a number in \(range.lowerBound)…\(range.upperBound), got \(v.debugDescription)")
            return nil
        }
        guard range.contains(d) else {
            error("\(where_).\(key)", "\(d) is outside \(range.lowerBound)…\(range.upperBound)")
            return nil
        }
        return d
    }

    mutating func string(_ t: TOMLTable?, _ where_: String, _ key: String, schema: String? = nil) -> String? {
        guard let v = value(t, where_, key, schema: schema, required: true) else { return nil }
        guard let s = v.string, !s.isEmpty else {
            error("\(where_).\(key)", "expected a non-empty string, got \(v.debugDescription)")
            return nil
        }
        return s
    }

    mutating func choice(_ t: TOMLTable?, _ where_: String, _ key: String, schema: String? = nil) -> String? {
        guard let v = value(t, where_, key, schema: schema, required: true) else { return nil }
        guard case .choice(let options) = spec(schema ?? where_, key).kind else { return nil }
        guard let s = v.string, options.contains(s) else {
            error("\(where_).\(key)", "expected one of \(options.map { "\"\($0)\"" }.joined(separator: ", ")), got \(v.debugDescription)")
            return nil
        }
        return s
    }

    mutating func bool(_ t: TOMLTable?, _ where_: String, _ key: String, schema: String = "device") -> Bool? {
        guard let v = value(t, where_, key, schema: schema, required: false) else { return nil }
        guard let b = v.bool else {
            error("\(where_).\(key)", "expected true or false, got \(v.debugDescription)")
            return nil
        }
        return b
    }

    mutating func transport(_ t: TOMLTable, _ where_: String) -> TransportSpec? {
        guard let s = string(t, where_, "transport", schema: "device") else { return nil }
        switch TransportSpec.parse(s) {
        case .success(let spec): return spec
        case .failure(let invalid):
            error("\(where_).transport", "\"\(s)\": \(invalid.message)")
            return nil
        }
    }
}
