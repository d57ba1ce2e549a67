/// Where a driver puts what it acquires. Implemented over the rings (OperandoBuffers); tests may
/// implement it to collect records.
///
/// Called only from the device's I/O thread: `push` must not allocate, lock or log.
public protocol RecordSink: AnyObject {
    /// Pushes one record of stream `stream` (an index into the driver's `streams`).
    /// `payload` is raw little-endian values: whole samples or one frame.
    func push(stream: Int, hostTime: HostInstant, deviceTime: Int64?, payload: UnsafeRawBufferPointer)
    /// Records an event on the device's event stream.
    func event(_ event: Event)
    /// The host clock, for stamping events that do not come with a read.
    var clock: any HostClock { get }
    /// A bracketed query of the device clock: the host read `hostBefore`, asked the device for
    /// its time and got `deviceTime` (ns), and read `hostAfter` when the answer arrived. Stored
    /// with the run and fed to the device's clock model.
    func clockExchange(hostBefore: HostInstant, deviceTime: Int64, hostAfter: HostInstant)
    /// A one-way stamp: the device stamped something it sent with `deviceTime` (ns, the instant
    /// it sent it, e.g. the end of an acquisition), and it arrived at `arrival`. Fed to the
    /// device's clock model; the least-delayed stamp of every 100 ms is stored with the run.
    func clockStamp(deviceTime: Int64, arrival: HostInstant)
    /// A request/reply round trip of a device without a clock: its host stamps' uncertainty is
    /// the spread of these. Stored with the run.
    func roundTrip(sent: HostInstant, received: HostInstant)
}

extension RecordSink {
    public func clockExchange(hostBefore: HostInstant, deviceTime: Int64, hostAfter: HostInstant) {}
    public func clockStamp(deviceTime: Int64, arrival: HostInstant) {}
    public func roundTrip(sent: HostInstant, received: HostInstant) {}
}

/// What a device says it is, recorded in the run's provenance.
public struct DeviceIdentity: Codable, Sendable, Equatable {
    public var model: String
    public var serialNumber: String
    public var firmware: String
    public var protocolVersion: String

    public init(model: String, serialNumber: String, firmware: String, protocolVersion: String) {
        self.model = model
        self.serialNumber = serialNumber
        self.firmware = firmware
        self.protocolVersion = protocolVersion
    }
}

/// A driver: a protocol codec plus a state machine over an injected link.
///
/// The daemon's device runner owns the thread: it opens the link, calls `setup` (again after
/// every reconnect), then calls `acquire` in a loop until the device is stopped. Drivers never
/// create threads or open ports themselves, so they run against real ports, TCP, or an
/// in-memory link to a simulator alike.
public protocol Instrument: AnyObject, Sendable {
    /// The driver's name as used in configuration (`driver = "…"`).
    static var driverName: String { get }
    static var driverVersion: String { get }
    /// The link this driver needs.
    static var linkKind: LinkKind { get }
    /// The streams this device produces, fixed for the driver's lifetime. The daemon assigns ids.
    var streams: [StreamDescriptor] { get }
    /// Identifies and configures the device. Replayed after every reconnect.
    func setup(link: DeviceLink, sink: any RecordSink) throws -> DeviceIdentity
    /// Reads, decodes and pushes what has arrived; returns within about `budget` so the runner
    /// can check for stop requests. Throws on disconnect or an unrecoverable protocol error.
    func acquire(link: DeviceLink, sink: any RecordSink, budget: Duration) throws
    /// Stops acquisition politely before the link is closed (best effort).
    func shutdown(link: DeviceLink)
    /// Carries out a command from the control socket (`move`, `home`, …) on the device's thread,
    /// between two `acquire` calls. Drivers without commands keep the default, which refuses.
    func perform(_ command: DeviceCommand, link: DeviceLink, sink: any RecordSink) throws -> [String: EventValue]
    /// Serial line settings the device needs, when it is reached over a serial port.
    static var serialDefaults: SerialSettings { get }
    /// Resolution of the device's timestamps, ns (added to every mapped uncertainty). Default 1.
    static var clockResolutionNs: Double { get }
    /// For devices that only stamp what they send (one-way): the most the constant part of the
    /// delay from the device's stamp to the host's read can be, ns. A one-way stream cannot
    /// measure it (it reads as an offset), so the model assumes it lies in [0, max]: half is
    /// subtracted from arrivals and half added to every uncertainty. Default 1 ms (a USB frame
    /// or a few bytes at serial speeds); the device's `clock_latency_max_us` overrides it.
    static var oneWayLatencyMaxNs: Int64 { get }
    /// True when `perform(DeviceCommand(name: "status"))` answers what the device is doing (a
    /// technique, its step, cycle, E and I); `status` then shows it. Default false.
    static var reportsActivity: Bool { get }
    /// For a packet driver (`linkKind == .packets`): true when it also runs over a byte stream
    /// (a serial port), finding its packets in the stream itself. Default false.
    static var acceptsByteStream: Bool { get }
}

extension Instrument {
    public func perform(_ command: DeviceCommand, link: DeviceLink, sink: any RecordSink) throws -> [String: EventValue] {
        throw InstrumentError(.unsupported, device: command.device, "the \(Self.driverName) driver has no command \"\(command.name)\"")
    }

    public static var serialDefaults: SerialSettings { SerialSettings() }

    public static var clockResolutionNs: Double { 1 }

    public static var oneWayLatencyMaxNs: Int64 { 1_000_000 }

    public static var reportsActivity: Bool { false }

    public static var acceptsByteStream: Bool { false }
}

/// A command for one device from the control socket.
public struct DeviceCommand: Sendable {
    public var device: String
    public var name: String
    public var arguments: [String: EventValue]

    public init(device: String, name: String, arguments: [String: EventValue] = [:]) {
        self.device = device
        self.name = name
        self.arguments = arguments
    }
}

/// A few typed accessors over a device's free-form settings from the config file.
public struct DeviceSettings: Sendable {
    public var values: [String: EventValue]
    public init(_ values: [String: EventValue] = [:]) { self.values = values }

    public func double(_ key: String) -> Double? {
        switch values[key] {
        case .number(let d): d
        case .integer(let i): Double(i)
        default: nil
        }
    }

    public func int(_ key: String) -> Int? {
        if case .integer(let i) = values[key] { return Int(i) }
        return nil
    }

    public func string(_ key: String) -> String? {
        if case .string(let s) = values[key] { return s }
        return nil
    }
}
