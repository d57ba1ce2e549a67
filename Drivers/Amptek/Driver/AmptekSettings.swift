import OperandoCore

/// The `amptek-dp5` driver's settings, validated when the driver is made. Every key, its
/// default and its bounds are here.
public struct AmptekSettings: Sendable, Equatable {
    /// `channels`: MCA channels (MCAC): 256, 512, 1024, 2048, 4096 or 8192. Default 2048.
    public var channels: Int
    /// `preset_s`: preset accumulation time (PRET), s, in 0.1 s steps; 0 = none (runs until
    /// stopped). 0…99999999.9. Default 0.
    public var presetSeconds: Double
    /// `poll_ms`: how often the spectrum + status (and clear) is read, ms: each frame is one
    /// such interval. 50…60000. Default 1000.
    public var pollMilliseconds: Int
    /// `gain`: total gain (GAIN), 0.75…500 (DP5 up to 150, PX5 500, DP5G 1…10; the device
    /// refuses what it cannot do). Absent: the detector keeps its own.
    public var gain: Double?
    /// `config`: further text commands ("THSL=1.5;TPEA=3.2;"), sent after MCAC and before GAIN
    /// and PRET (TPEA must precede GAIN); RESC goes first. MCAC, PRET and GAIN have their own
    /// keys and are refused here.
    public var extraCommands: [AmptekTextCommand]
    /// `clear_on_start`: clear the spectrum before enabling the MCA at setup. Default true.
    public var clearOnStart: Bool

    public static let keys = ["channels", "preset_s", "poll_ms", "gain", "config", "clear_on_start"]
    public static let pollRange = 50...60000
    public static let gainRange = 0.75...500.0
    public static let presetRange = 0.0...99_999_999.9

    public init(channels: Int = 2048, presetSeconds: Double = 0, pollMilliseconds: Int = 1000, gain: Double? = nil, extraCommands: [AmptekTextCommand] = [], clearOnStart: Bool = true) {
        self.channels = channels
        self.presetSeconds = presetSeconds
        self.pollMilliseconds = pollMilliseconds
        self.gain = gain
        self.extraCommands = extraCommands
        self.clearOnStart = clearOnStart
    }

    /// Reads and checks the settings; the error names the key, the value and what is allowed.
    public init(device: String, _ s: DeviceSettings) throws {
        func fail(_ text: String) -> InstrumentError { InstrumentError(.unsupported, device: device, text) }
        for key in s.values.keys where !Self.keys.contains(key) && !Self.ignoredKeys.contains(key) {
            throw fail("unknown setting \"\(key)\" for the amptek-dp5 driver; it knows \(Self.keys.joined(separator: ", "))")
        }
        func integer(_ key: String, _ fallback: Int) throws -> Int {
            guard let v = s.values[key] else { return fallback }
            if let i = s.int(key) { return i }
            if case .number(let d) = v, d.rounded() == d, abs(d) < 1e9 { return Int(d) }
            throw fail("\(key) = \(v) is not a whole number")
        }
        func number(_ key: String) throws -> Double? {
            guard let v = s.values[key] else { return nil }
            guard let d = s.double(key), d.isFinite else { throw fail("\(key) = \(v) is not a number") }
            return d
        }
        channels = try integer("channels", 2048)
        guard AmptekSpectrum.channelCounts.contains(channels) else {
            throw fail("channels = \(channels) is not one the MCA offers: 256, 512, 1024, 2048, 4096 or 8192 (MCAC)")
        }
        presetSeconds = try number("preset_s") ?? 0
        guard Self.presetRange.contains(presetSeconds) else {
            throw fail("preset_s = \(presetSeconds) is outside 0…99999999.9 s (0 = no preset time)")
        }
        let tenths = presetSeconds * 10
        guard abs(tenths - tenths.rounded()) < 1e-6 else {
            throw fail("preset_s = \(presetSeconds) is finer than the detector's 0.1 s steps (PRET); use e.g. \(AmptekTextConfig.fixed(presetSeconds, decimals: 1))")
        }
        pollMilliseconds = try integer("poll_ms", 1000)
        guard Self.pollRange.contains(pollMilliseconds) else {
            throw fail("poll_ms = \(pollMilliseconds) is outside 50…60000 ms")
        }
        gain = try number("gain")
        if let g = gain, !Self.gainRange.contains(g) {
            throw fail("gain = \(g) is outside 0.75…500 (total gain, GAIN; a DP5 takes 0.75…150, a PX5 0.75…500, a DP5G 1…10)")
        }
        switch s.values["clear_on_start"] {
        case nil: clearOnStart = true
        case .bool(let b)?: clearOnStart = b
        case let v?: throw fail("clear_on_start = \(v) is not true or false")
        }
        switch s.values["config"] {
        case nil: extraCommands = []
        case .string(let text)?:
            do {
                extraCommands = try AmptekTextConfig.parse(text, requireValues: true)
            } catch {
                throw fail("config: \(error)")
            }
        case let v?: throw fail("config = \(v) is not text such as \"THSL=1.5;TPEA=3.2;\"")
        }
        for c in extraCommands {
            switch c.name {
            case "MCAC": throw fail("config sets MCAC, which the channels setting owns; remove it from config and set channels")
            case "PRET": throw fail("config sets PRET, which the preset_s setting owns; remove it from config and set preset_s")
            case "GAIN": throw fail("config sets GAIN, which the gain setting owns; remove it from config and set gain")
            case "MCAE": throw fail("config sets MCAE (MCA enabled at power-up); the driver enables and disables the MCA itself")
            default: break
            }
        }
        let text = configurationText
        guard text.utf8.count <= AmptekPacket.maxRequestDataLength else {
            throw fail("the text configuration is \(text.utf8.count) bytes; one packet carries at most \(AmptekPacket.maxRequestDataLength): shorten config")
        }
    }

    /// Keys the daemon's device table passes to every driver.
    static let ignoredKeys: Set<String> = ["driver", "transport", "port", "baud", "name", "simulate", "serial_number", "clock_latency_max_us"]

    /// The commands sent at setup, in an order the DP5 accepts: RESC first, MCAC, the extra
    /// commands (CLCK before TPEA as given), then GAIN (needs TPEA) and PRET.
    public var commands: [AmptekTextCommand] {
        var list: [AmptekTextCommand] = extraCommands.filter { $0.name == "RESC" }
        list.append(AmptekTextCommand("MCAC", "\(channels)"))
        list += extraCommands.filter { $0.name != "RESC" }
        if let g = gain { list.append(AmptekTextCommand("GAIN", AmptekTextConfig.fixed(g, decimals: 3))) }
        list.append(AmptekTextCommand("PRET", presetSeconds > 0 ? AmptekTextConfig.fixed(presetSeconds, decimals: 1) : "OFF"))
        return list
    }

    /// "MCAC=2048;THSL=1.5;GAIN=20.000;PRET=OFF;".
    public var configurationText: String { AmptekTextConfig.format(commands) }
}
