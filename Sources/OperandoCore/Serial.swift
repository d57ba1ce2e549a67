/// Line settings of a serial port.
public struct SerialSettings: Sendable, Equatable, Codable, CustomStringConvertible {
    public enum Parity: String, Sendable, Codable, CaseIterable { case none, odd, even, mark, space }
    public enum FlowControl: String, Sendable, Codable, CaseIterable {
        case none
        /// XON/XOFF software flow control.
        case xonxoff
        /// RTS/CTS hardware flow control.
        case rtscts
    }

    public var baudRate: Int
    public var dataBits: Int
    public var parity: Parity
    public var stopBits: Int
    public var flowControl: FlowControl
    /// Drive DTR high (true), low (false), or leave it alone (nil).
    public var dtr: Bool?
    /// Drive RTS high (true), low (false), or leave it alone (nil). Ignored with RTS/CTS flow control.
    public var rts: Bool?

    public init(baudRate: Int = 115_200, dataBits: Int = 8, parity: Parity = .none, stopBits: Int = 1, flowControl: FlowControl = .none, dtr: Bool? = true, rts: Bool? = true) {
        self.baudRate = baudRate
        self.dataBits = dataBits
        self.parity = parity
        self.stopBits = stopBits
        self.flowControl = flowControl
        self.dtr = dtr
        self.rts = rts
    }

    public var description: String {
        "\(baudRate) \(dataBits)\(parity.rawValue.first!.uppercased())\(stopBits) flow=\(flowControl.rawValue)"
    }
}

/// Which serial port a device is on: by path, or by the identity of its USB bridge, which
/// survives re-enumeration (ttyUSB0 becoming ttyUSB1 after a replug).
public enum SerialPortMatch: Sendable, Equatable, CustomStringConvertible {
    /// A device path (`/dev/ttyUSB0`, `/dev/serial/by-id/…`, a pseudo-terminal or a symlink to one).
    case path(String)
    /// A USB serial bridge by vendor and product id, and optionally its serial number.
    case usb(vendor: UInt16, product: UInt16, serialNumber: String?)
    /// A USB serial bridge by serial number alone.
    case serialNumber(String)
    /// A USB serial bridge by where it is plugged in: bus number and port path, as sysfs names it
    /// (`1-1.2` = bus 1, port 1, hub port 2).
    case usbPort(String)

    public var description: String {
        switch self {
        case .path(let p): p
        case .usb(let v, let p, let s): "usb " + Self.hex(v) + ":" + Self.hex(p) + (s.map { " serial \($0)" } ?? "")
        case .serialNumber(let s): "serial number \(s)"
        case .usbPort(let p): "usb port \(p)"
        }
    }

    public static func hex(_ v: UInt16) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, 4 - s.count)) + s
    }

    /// Whether `port` is the one this match names.
    public func matches(_ port: SerialPortInfo) -> Bool {
        switch self {
        case .path(let p): port.name == p
        case .usb(let v, let p, let s): port.vendorID == v && port.productID == p && (s == nil || port.serialNumber == s)
        case .serialNumber(let s): port.serialNumber == s
        case .usbPort(let p): port.usbPortPath == p
        }
    }
}

/// A serial port as the system reports it (libserialport's sp_list_ports).
public struct SerialPortInfo: Sendable, Equatable, Codable {
    public var name: String
    public var description: String
    /// "usb", "native" or "bluetooth".
    public var transport: String
    public var vendorID: UInt16?
    public var productID: UInt16?
    public var manufacturer: String?
    public var product: String?
    public var serialNumber: String?
    public var usbBus: Int?
    public var usbAddress: Int?
    /// sysfs port path of the USB device (`1-1.2`), when known.
    public var usbPortPath: String?

    public init(name: String, description: String, transport: String, vendorID: UInt16? = nil, productID: UInt16? = nil, manufacturer: String? = nil, product: String? = nil, serialNumber: String? = nil, usbBus: Int? = nil, usbAddress: Int? = nil, usbPortPath: String? = nil) {
        self.name = name
        self.description = description
        self.transport = transport
        self.vendorID = vendorID
        self.productID = productID
        self.manufacturer = manufacturer
        self.product = product
        self.serialNumber = serialNumber
        self.usbBus = usbBus
        self.usbAddress = usbAddress
        self.usbPortPath = usbPortPath
    }
}
