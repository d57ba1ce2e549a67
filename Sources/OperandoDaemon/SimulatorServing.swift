import AmptekDriver
import AmptekSimulator
import NanonisDriver
import NanonisSimulator
import OperandoCore
import OperandoIO
import OperandoVirtualCell
import ZaberSimulator

/// The simulators `operando-sim` can serve over a real byte stream (a TCP connection or a
/// pseudo-terminal), so operandod or a vendor's own client library can talk to them.
public enum SimulatorServing {
    /// The Zaber ASCII daisy chain (`ZaberSimulator`). Zaber driver names in `DriverRegistry`
    /// (e.g. "zaber-ascii") are accepted for it too.
    public static let zaber = "zaber"
    /// The Nanonis SPM controller (`NanonisSimulator`); "nanonis-spm" is accepted too.
    public static let nanonis = "nanonis"
    /// The Amptek DP5/PX5/X-123 spectrometer (`AmptekSimulator`); "amptek-dp5" is accepted too.
    /// Served over packets (`--packet-fd`, the umockdev harness's USB bulk endpoints) or a byte
    /// stream (its RS-232 port: `--pty`).
    public static let amptek = "amptek"

    private static func isZaber(_ name: String) -> Bool { name == zaber || name.hasPrefix("zaber") && DriverRegistry.names.contains(name) }

    /// Every simulator name `makeServer` accepts.
    public static var names: [String] {
        var names = DriverRegistry.names.filter {
            DriverRegistry.linkKind($0) == .byteStream && !isZaber($0) && $0 != NanonisDriver.driverName && $0 != AmptekDriver.driverName
        }
        names.append(zaber)
        names += [nanonis, NanonisDriver.driverName, amptek, AmptekDriver.driverName]
        names += DriverRegistry.names.filter { isZaber($0) && $0 != zaber }
        return names
    }

    /// What a served simulator is made of.
    public struct Options: Sendable {
        /// Device name (used in serial numbers).
        public var name: String
        /// Cell seconds per host second, for simulators on the virtual cell.
        public var timeScale: Double
        /// Devices on a Zaber chain.
        public var zaberDevices: Int
        /// The simulated instrument's own clock (simulators with a device clock).
        public var deviceClock: SimulatedDeviceClock

        public init(
            name: String = "sim", timeScale: Double = 600, zaberDevices: Int = 1,
            deviceClock: SimulatedDeviceClock = SimulatedDeviceClock(driftPPM: 25, offsetNs: 1_000_000_000_000)
        ) {
            self.name = name
            self.timeScale = timeScale
            self.zaberDevices = zaberDevices
            self.deviceClock = deviceClock
        }
    }

    /// Serves one client at a time. A Zaber chain, a Nanonis controller and an Amptek MCA keep
    /// their state from one client to the next (the instrument stays powered while the host
    /// reconnects); the demo simulators start afresh.
    public final class Server: Sendable {
        private let streamBody: (@Sendable (any ByteStreamTransport, () -> Bool) throws -> Void)?
        private let packetBody: (@Sendable (any PacketTransport, () -> Bool) throws -> Void)?
        private let name: String

        init(
            _ name: String, stream: (@Sendable (any ByteStreamTransport, () -> Bool) throws -> Void)?,
            packets: (@Sendable (any PacketTransport, () -> Bool) throws -> Void)? = nil
        ) {
            self.name = name
            streamBody = stream
            packetBody = packets
        }

        /// Serves `client` until `shouldStop` returns true or the client goes away.
        public func serve(_ client: any ByteStreamTransport, shouldStop: () -> Bool) throws {
            guard let streamBody else {
                throw InstrumentError(.unsupported, device: name, "the \(name) simulator exchanges packets; serve it with --packet-fd")
            }
            try streamBody(client, shouldStop)
        }

        /// Serves a packet link (one request per packet) until `shouldStop` or the peer goes away.
        public func serve(packets client: any PacketTransport, shouldStop: () -> Bool) throws {
            guard let packetBody else {
                throw InstrumentError(.unsupported, device: name, "the \(name) simulator speaks over a byte stream; serve it with --listen or --pty")
            }
            try packetBody(client, shouldStop)
        }
    }

    /// Makes the server for `simulator`, or throws `InstrumentError(.unsupported)` naming the
    /// simulators there are.
    public static func makeServer(_ simulator: String, options: Options, clock: any HostClock) throws -> Server {
        if isZaber(simulator) {
            guard (1...99).contains(options.zaberDevices) else {
                throw InstrumentError(.unsupported, device: simulator, "a Zaber chain has 1 to 99 devices, not \(options.zaberDevices)")
            }
            let chain = ZaberSimulator(devices: ZaberSimulator.standard(count: options.zaberDevices), clock: clock, seed: DriverRegistry.seed(for: options.name))
            return Server(simulator, stream: { client, shouldStop in chain.serve(client, shouldStop: shouldStop) })
        }
        if simulator == NanonisDriver.driverName || simulator == nanonis {
            // One controller for all clients: its scan goes on while the host reconnects.
            var params = VirtualCell.Parameters()
            params.timeScale = options.timeScale
            let controller = NanonisSimulator(cell: VirtualCell(params), clock: clock, seed: DriverRegistry.seed(for: options.name))
            return Server(simulator, stream: { client, shouldStop in controller.serve(client, shouldStop: shouldStop) })
        }
        if simulator == amptek || simulator == AmptekDriver.driverName {
            var params = VirtualCell.Parameters()
            params.timeScale = options.timeScale
            let mca = AmptekSimulator(
                cell: VirtualCell(params), clock: clock, serialNumber: options.name, deviceClock: options.deviceClock, seed: DriverRegistry.seed(for: options.name))
            return Server(
                simulator, stream: { client, shouldStop in mca.serve(client, shouldStop: shouldStop) },
                packets: { client, shouldStop in mca.serve(client, shouldStop: shouldStop) })
        }
        guard DriverRegistry.linkKind(simulator) == .byteStream else {
            throw InstrumentError(
                .unsupported, device: simulator,
                "no byte-stream simulator by that name; available: \(names.joined(separator: ", "))")
        }
        var params = VirtualCell.Parameters()
        params.timeScale = options.timeScale
        let cell = VirtualCell(params)
        return Server(simulator, stream: { client, shouldStop in
            try DriverRegistry.serveSimulator(simulator, name: options.name, byteStream: client, cell: cell, clock: clock, deviceClock: options.deviceClock, shouldStop: shouldStop)
        })
    }
}
