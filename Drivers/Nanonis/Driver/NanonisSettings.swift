import OperandoCore

/// The `nanonis-spm` driver's settings (the device's keys in the config file), each with its
/// default and bounds, validated when the driver is made.
///
/// | key | type | default | meaning |
/// | --- | --- | --- | --- |
/// | `channels` | string of signal indexes | `"30,0,74"` | Scan channels (Scan.BufferSet), 1–8 of the controller's signals 0–127: by default Z (topography), Current and the oscillation controller's phase in the simulator's signal list. |
/// | `pixels` | integer | 64 | Pixels per line: a multiple of 16 in 16…4096 (the controller moves data in packets of 16). |
/// | `lines` | integer | 64 | Lines per frame, 1…4096. |
/// | `frame_size_nm` | number | 5000 | Frame width, nm, in (0, 100 000]; the height keeps pixels square (width × lines / pixels). |
/// | `frame_center_x_nm`, `frame_center_y_nm` | number | 0 | Frame centre, nm, within ±100 000. |
/// | `frame_angle_deg` | number | 0 | Frame rotation, degrees in −180…180 (positive is clockwise). |
/// | `speed_nm_per_s` | number | 10 000 | Forward (and backward) tip speed, nm/s, in (0, 1 000 000]; a line (forward and back) takes 2 × width / speed. |
/// | `signals` | string of signal indexes | `"24,0,30"` | Signals read at `signals_hz` (Signals.ValsGet), 0–16 indexes; empty for none. |
/// | `signals_hz` | number | 10 | Rate of the signals stream, 0.1…100 Hz, or 0 for no signals stream. |
/// | `start_scan` | bool | true | Start scanning (upwards) at setup when no matching scan is running. |
/// | `reply_timeout_ms` | integer | 3000 | How long a reply may take before the controller counts as not answering, 100…60 000. |
public struct NanonisSettings: Sendable, Equatable {
    public var channels: [Int32] = [30, 0, 74]
    public var pixels = 64
    public var lines = 64
    public var frameSizeNm = 5000.0
    public var frameCenterXNm = 0.0
    public var frameCenterYNm = 0.0
    public var frameAngleDeg = 0.0
    public var speedNmPerS = 10_000.0
    public var signals: [Int32] = [24, 0, 30]
    public var signalsHz = 10.0
    public var startScan = true
    public var replyTimeoutMs = 3000

    /// Every key the driver reads.
    public static let keys = [
        "channels", "pixels", "lines", "frame_size_nm", "frame_center_x_nm", "frame_center_y_nm", "frame_angle_deg",
        "speed_nm_per_s", "signals", "signals_hz", "start_scan", "reply_timeout_ms",
    ]

    /// The largest frame record the driver will build (all channels, both directions), bytes.
    public static let maxFrameBytes = 256 << 20

    public init() {}

    /// Reads and checks `settings`; throws `InstrumentError(.unsupported)` naming the key, the
    /// value and what is expected.
    public init(_ settings: DeviceSettings, device: String) throws {
        // "key = value: why", the form the config loader attributes to the key.
        func fail(_ key: String, _ why: String) -> InstrumentError {
            InstrumentError(.unsupported, device: device, "\(key) = \(settings.values[key].map { "\($0)" } ?? "(default)"): \(why)")
        }
        func number(_ key: String, _ fallback: Double) throws -> Double {
            guard let v = settings.values[key] else { return fallback }
            guard let d = v.doubleValue, d.isFinite else { throw fail(key, "not a number") }
            return d
        }
        func integer(_ key: String, _ fallback: Int) throws -> Int {
            guard let v = settings.values[key] else { return fallback }
            guard case .integer(let i) = v else { throw fail(key, "not a whole number") }
            return Int(i)
        }
        func indexes(_ key: String, _ fallback: [Int32], allowed: ClosedRange<Int>) throws -> [Int32] {
            guard let v = settings.values[key] else { return fallback }
            let text: String
            switch v {
            case .string(let s): text = s
            case .integer(let i): text = String(i)
            default: throw fail(key, "not a comma-separated list of signal indexes (e.g. \"30,0,74\")")
            }
            let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingSpaces() }
            if parts == [""] {
                guard allowed.lowerBound == 0 else { throw fail(key, "needs at least one signal index") }
                return []
            }
            var out: [Int32] = []
            for p in parts {
                guard let i = Int32(p), (0...127).contains(i) else {
                    throw fail(key, "\(p.debugDescription) is not a signal index 0…127 (see Signals.NamesGet or the Signals Manager's RT Idx)")
                }
                guard !out.contains(i) else { throw fail(key, "signal \(i) is listed twice") }
                out.append(i)
            }
            guard allowed.contains(out.count) else { throw fail(key, "\(out.count) indexes; expected \(allowed.lowerBound)…\(allowed.upperBound)") }
            return out
        }

        channels = try indexes("channels", channels, allowed: 1...8)
        pixels = try integer("pixels", pixels)
        guard (16...4096).contains(pixels), pixels % 16 == 0 else {
            throw fail("pixels", "must be a multiple of 16 in 16…4096 (the controller moves scan data in packets of 16 pixels)")
        }
        lines = try integer("lines", lines)
        guard (1...4096).contains(lines) else { throw fail("lines", "outside 1…4096") }
        frameSizeNm = try number("frame_size_nm", frameSizeNm)
        guard frameSizeNm > 0 && frameSizeNm <= 100_000 else { throw fail("frame_size_nm", "outside (0, 100000] nm") }
        frameCenterXNm = try number("frame_center_x_nm", frameCenterXNm)
        frameCenterYNm = try number("frame_center_y_nm", frameCenterYNm)
        for (key, v) in [("frame_center_x_nm", frameCenterXNm), ("frame_center_y_nm", frameCenterYNm)] where abs(v) > 100_000 {
            throw fail(key, "outside ±100000 nm")
        }
        frameAngleDeg = try number("frame_angle_deg", frameAngleDeg)
        guard abs(frameAngleDeg) <= 180 else { throw fail("frame_angle_deg", "outside −180…180°") }
        speedNmPerS = try number("speed_nm_per_s", speedNmPerS)
        guard speedNmPerS > 0 && speedNmPerS <= 1_000_000 else { throw fail("speed_nm_per_s", "outside (0, 1000000] nm/s") }
        signals = try indexes("signals", signals, allowed: 0...16)
        signalsHz = try number("signals_hz", signalsHz)
        guard signalsHz == 0 || (0.1...100).contains(signalsHz) else { throw fail("signals_hz", "outside 0.1…100 Hz (0 for no signals stream)") }
        switch settings.values["start_scan"] {
        case nil: break
        case .bool(let b)?: startScan = b
        case .some: throw fail("start_scan", "not true or false")
        }
        replyTimeoutMs = try integer("reply_timeout_ms", replyTimeoutMs)
        guard (100...60_000).contains(replyTimeoutMs) else { throw fail("reply_timeout_ms", "outside 100…60000 ms") }
        for key in settings.values.keys.sorted() where !Self.keys.contains(key) {
            throw fail(key, "unknown setting; the nanonis-spm driver reads \(Self.keys.joined(separator: ", "))")
        }
        guard frameBytes <= Self.maxFrameBytes else {
            throw fail("pixels", "\(channels.count) channels × 2 directions × \(lines) lines × \(pixels) pixels make \(frameBytes >> 20) MiB frames; at most \(Self.maxFrameBytes >> 20) MiB")
        }
    }

    /// The frame height, nm: square pixels.
    public var frameHeightNm: Double { frameSizeNm * Double(lines) / Double(pixels) }
    /// The nominal time of one line (forward and backward), s.
    public var linePeriodSeconds: Double { 2 * frameSizeNm / speedNmPerS }
    /// Bytes of one frame record.
    public var frameBytes: Int { channels.count * 2 * lines * pixels * 4 }
    /// Whether there is a signals stream.
    public var hasSignalsStream: Bool { !signals.isEmpty && signalsHz > 0 }
}

extension Substring {
    fileprivate func trimmingSpaces() -> String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
