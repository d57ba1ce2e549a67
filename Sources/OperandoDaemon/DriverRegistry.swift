import AmptekDriver
import AmptekSimulator
import DemoDriver
import DemoSimulator
import NanonisDriver
import NanonisSimulator
import PalmSensDriver
import PalmSensSimulator
import OperandoCore
import OperandoIO
import OperandoVirtualCell
import ZaberDriver
import ZaberSimulator

/// The drivers this build knows, and their simulators for `transport = "simulated"`.
public enum DriverRegistry {
    public static let names = [DemoPotentiostatDriver.driverName, DemoXRFDriver.driverName, ZaberStageDriver.driverName, NanonisDriver.driverName, PalmSensDriver.driverName, AmptekDriver.driverName]

    private static func type(_ driver: String) -> (any Instrument.Type)? {
        switch driver {
        case DemoPotentiostatDriver.driverName: DemoPotentiostatDriver.self
        case DemoXRFDriver.driverName: DemoXRFDriver.self
        case ZaberStageDriver.driverName: ZaberStageDriver.self
        case NanonisDriver.driverName: NanonisDriver.self
        case PalmSensDriver.driverName: PalmSensDriver.self
        case AmptekDriver.driverName: AmptekDriver.self
        default: nil
        }
    }

    public static func serialDefaults(_ driver: String) -> SerialSettings? { type(driver)?.serialDefaults }

    public static func linkKind(_ driver: String) -> LinkKind? { type(driver)?.linkKind }

    public static func acceptsByteStream(_ driver: String) -> Bool { type(driver)?.acceptsByteStream ?? false }

    public static func makeDriver(_ driver: String, name: String, settings: DeviceSettings) throws -> any Instrument {
        switch driver {
        case DemoPotentiostatDriver.driverName: try DemoPotentiostatDriver(name: name, settings: settings)
        case DemoXRFDriver.driverName: try DemoXRFDriver(name: name, settings: settings)
        case ZaberStageDriver.driverName: try ZaberStageDriver(name: name, settings: settings)
        case NanonisDriver.driverName: try NanonisDriver(name: name, settings: settings)
        case PalmSensDriver.driverName: try PalmSensDriver(name: name, settings: settings)
        case AmptekDriver.driverName: try AmptekDriver(name: name, settings: settings)
        default: throw InstrumentError(.unsupported, device: name, "unknown driver \"\(driver)\"; known: \(names.joined(separator: ", "))")
        }
    }

    /// Runs the simulator for `driver` on the device end of `link` until `shouldStop`.
    public static func serveSimulator(
        _ driver: String, name: String, link: InMemoryLink, cell: VirtualCell, clock: any HostClock, deviceClock: SimulatedDeviceClock, shouldStop: () -> Bool
    ) {
        let seed = Self.seed(for: name)
        switch driver {
        case DemoPotentiostatDriver.driverName:
            DemoPotentiostatSimulator(cell: cell, clock: clock, serialNumber: "PS-\(name)", deviceClock: deviceClock, seed: seed).serve(link.deviceByteStream, shouldStop: shouldStop)
        case DemoXRFDriver.driverName:
            DemoXRFSimulator(cell: cell, clock: clock, serialNumber: "XRF-\(name)", deviceClock: deviceClock, seed: seed).serve(link.devicePackets, shouldStop: shouldStop)
        case ZaberStageDriver.driverName:
            ZaberSimulator(devices: ZaberSimulator.standard(count: 1), clock: clock, seed: seed).serve(link.deviceByteStream, shouldStop: shouldStop)
        case NanonisDriver.driverName:
            NanonisSimulator(cell: cell, clock: clock, seed: seed).serve(link.deviceByteStream, shouldStop: shouldStop)
        case PalmSensDriver.driverName:
            PalmSensSimulator(cell: cell, clock: clock, serialNumber: "PS-\(name)", seed: seed).serve(link.deviceByteStream, shouldStop: shouldStop)
        case AmptekDriver.driverName:
            AmptekSimulator(cell: cell, clock: clock, serialNumber: "DP5-\(name)", deviceClock: deviceClock, seed: seed).serve(link.devicePackets, shouldStop: shouldStop)
        default:
            break
        }
    }

    /// A reproducible noise seed from a device name (djb2), so a simulated run can be repeated.
    public static func seed(for name: String) -> UInt64 {
        UInt64(truncatingIfNeeded: name.utf8.reduce(5381) { ($0 << 5) &+ $0 &+ Int($1) })
    }

    /// Serves a simulator on a byte-stream transport (for `operando-sim --listen`).
    public static func serveSimulator(
        _ driver: String, name: String, byteStream: any ByteStreamTransport, cell: VirtualCell, clock: any HostClock, deviceClock: SimulatedDeviceClock,
        shouldStop: () -> Bool
    ) throws {
        switch driver {
        case DemoPotentiostatDriver.driverName:
            DemoPotentiostatSimulator(cell: cell, clock: clock, serialNumber: "PS-\(name)", deviceClock: deviceClock).serve(byteStream, shouldStop: shouldStop)
        case PalmSensDriver.driverName:
            PalmSensSimulator(cell: cell, clock: clock, serialNumber: "PS-\(name)", seed: seed(for: name)).serve(byteStream, shouldStop: shouldStop)
        default:
            throw InstrumentError(.unsupported, device: name, "the \(driver) simulator does not speak over a byte stream")
        }
    }
}

extension DriverRegistry {
    /// What a USB serial bridge probably is, from its vendor and product id (for `ports`).
    public static func recognise(_ port: SerialPortInfo) -> String? {
        switch (port.vendorID, port.productID) {
        case (0x2939?, _): "Zaber (zaber-ascii)"
        case (0x0403?, 0xFAF0?): "Thorlabs APT motor controller"
        case (0x2F70?, _): "PalmSens EmStat4/Nexus (palmsens-methodscript)"
        case (0x10C4?, 0x842A?): "Amptek DP5/PX5/X-123 (amptek-dp5)"
        case (0x0403?, _): "FTDI USB-serial bridge (Zaber cables, EmStat Pico, …)"
        case (0x10C4?, 0xEA60?): "Silicon Labs CP210x bridge"
        default: nil
        }
    }
}
