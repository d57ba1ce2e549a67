/// An error from an instrument, its transport or its driver.
///
/// Carries what failed (`code`), where (`device`) and why (`underlying`); `description`
/// reads as one sentence with advice when there is some.
public struct InstrumentError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The device node, port or host is not there.
        case notFound = "not_found"
        /// The device went away during use (unplugged, connection reset).
        case disconnected
        /// The device did not answer within the allowed time.
        case replyTimedOut = "reply_timed_out"
        /// The device said something the driver cannot parse.
        case protocolViolation = "protocol_violation"
        /// The device refused a command.
        case rejected
        /// The transport failed (a system call error).
        case transportFailed = "transport_failed"
        /// The configuration asks for something this device or driver cannot do.
        case unsupported
    }

    public var code: Code
    public var device: String
    public var detail: String
    public var underlying: (any Error & Sendable)?

    public init(_ code: Code, device: String, _ detail: String, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.device = device
        self.detail = detail
        self.underlying = underlying
    }

    public var description: String {
        var s = "\(device): \(detail)"
        if let underlying { s += " (\(underlying))" }
        return s
    }
}
