/// A value attached to an event.
public enum EventValue: Codable, Sendable, Equatable, CustomStringConvertible {
    case string(String)
    case number(Double)
    case integer(Int64)
    case bool(Bool)

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let i = try? c.decode(Int64.self) {
            self = .integer(i)
        } else if let d = try? c.decode(Double.self) {
            self = .number(d)
        } else {
            self = .string(try c.decode(String.self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .number(let d): try c.encode(d)
        case .integer(let i): try c.encode(i)
        case .bool(let b): try c.encode(b)
        }
    }

    /// The value as a number, whether it was stored as an integer or not (JSON does not keep the
    /// difference between 5000 and 5000.0).
    public var doubleValue: Double? {
        switch self {
        case .number(let d): d
        case .integer(let i): Double(i)
        default: nil
        }
    }

    public var description: String {
        switch self {
        case .string(let s): s
        case .number(let d): "\(d)"
        case .integer(let i): "\(i)"
        case .bool(let b): "\(b)"
        }
    }
}

/// Something that happened at an instant on the host timeline.
///
/// Stimuli (a setpoint applied, a technique step, a move, a trigger), operator markers, state
/// changes (connected, disconnected, run started) and gaps (data that could not be acquired)
/// all share this shape so they sit on the same timeline as the data.
public struct Event: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// A stimulus applied to the sample: setpoint, step, bias, move, trigger edge.
        case stimulus
        /// A note from an operator or a script.
        case marker
        /// A device or run changed state.
        case stateChange = "state_change"
        /// Data is missing between `hostTime` and `endTime` (disconnect, timeout).
        case gap
        /// Something needs attention: overflow, write error, a device fault.
        case alarm
    }

    public var kind: Kind
    /// The device name, or "daemon".
    public var source: String
    /// When it happened on the host timeline. For an event with a device time, the device time
    /// mapped through the device's live clock model (the arrival time until the model has
    /// data); otherwise the host's stamp.
    public var hostTime: HostInstant
    /// For gaps: where the gap ends on the host timeline.
    public var endTime: HostInstant?
    /// The device clock at the event, nanoseconds, when the device reported one.
    public var deviceTime: Int64?
    /// Half-width of the interval around `hostTime` that holds the true instant, ns: from the
    /// device's clock model, or the transport's latency spread for a host stamp. Absent when
    /// not known yet (no clock observations) or not meaningful (daemon events are exact).
    public var uncertaintyNs: Int64?
    public var message: String
    public var values: [String: EventValue]

    public init(
        kind: Kind, source: String, hostTime: HostInstant, endTime: HostInstant? = nil, deviceTime: Int64? = nil,
        uncertaintyNs: Int64? = nil, message: String, values: [String: EventValue] = [:]
    ) {
        self.kind = kind
        self.source = source
        self.hostTime = hostTime
        self.endTime = endTime
        self.deviceTime = deviceTime
        self.uncertaintyNs = uncertaintyNs
        self.message = message
        self.values = values
    }
}
