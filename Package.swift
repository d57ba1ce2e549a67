// swift-tools-version:6.0
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "operandod",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "operandod", targets: ["operandod"]),
        .executable(name: "operandoctl", targets: ["operandoctl"]),
        .executable(name: "operando-sim", targets: ["operando-sim"]),
        .executable(name: "operando-bench", targets: ["operando-bench"]),
        // LD_PRELOAD shim answering the modem-line ioctls that pseudo-terminals lack; tests only.
        .library(name: "operando-modem-shim", type: .dynamic, targets: ["COperandoModemShim"]),
        // LD_PRELOAD shim that simulates a full disk under one directory; tests only.
        .library(name: "operando-fault-shim", type: .dynamic, targets: ["COperandoFaultShim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
    ],
    targets: [
        // C: system libraries and one small shim. Only OperandoIO imports these.
        .systemLibrary(
            name: "CSerialPort", path: "Sources/CSerialPort", pkgConfig: "libserialport",
            providers: [.apt(["libserialport-dev"])]),
        .systemLibrary(
            name: "CLibUSB", path: "Sources/CLibUSB", pkgConfig: "libusb-1.0",
            providers: [.apt(["libusb-1.0-0-dev"])]),
        .systemLibrary(
            name: "CHDF5", path: "Sources/CHDF5", pkgConfig: "hdf5",
            providers: [.apt(["libhdf5-dev"])]),
        .target(name: "COperandoShim", path: "Sources/COperandoShim"),
        .target(name: "COperandoModemShim", path: "Sources/COperandoModemShim"),
        .target(name: "COperandoFaultShim", path: "Sources/COperandoFaultShim"),

        // Pure layers.
        .target(name: "OperandoCore", swiftSettings: swiftSettings),
        .target(name: "OperandoBuffers", dependencies: ["OperandoCore"], swiftSettings: swiftSettings),
        .target(name: "OperandoSync", dependencies: ["OperandoCore"], swiftSettings: swiftSettings),
        .target(
            name: "OperandoIO",
            dependencies: [
                "OperandoCore", "OperandoBuffers", "COperandoShim", "CSerialPort", "CLibUSB", "CHDF5",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),
        .target(
            name: "OperandoStore",
            dependencies: [
                "OperandoCore", "OperandoBuffers", "OperandoIO",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),
        .target(name: "OperandoControl", dependencies: ["OperandoCore"], swiftSettings: swiftSettings),
        // Reading runs back on one timeline: clock refits and stimulus–response alignment.
        .target(name: "OperandoTimeline", dependencies: ["OperandoCore", "OperandoIO", "OperandoStore", "OperandoSync"], swiftSettings: swiftSettings),

        // Instruments: drivers see OperandoCore only; simulators add the virtual cell.
        .target(
            name: "OperandoVirtualCell", dependencies: ["OperandoCore"], path: "Drivers/VirtualCell",
            swiftSettings: swiftSettings),
        .target(
            name: "DemoDriver", dependencies: ["OperandoCore"], path: "Drivers/Demo/Driver",
            swiftSettings: swiftSettings),
        .target(
            name: "DemoSimulator", dependencies: ["OperandoCore", "OperandoVirtualCell"],
            path: "Drivers/Demo/Simulator", swiftSettings: swiftSettings),

        .target(
            name: "ZaberDriver", dependencies: ["OperandoCore"], path: "Drivers/Zaber/Driver",
            swiftSettings: swiftSettings),
        .target(
            name: "ZaberSimulator", dependencies: ["OperandoCore", "OperandoVirtualCell"],
            path: "Drivers/Zaber/Simulator", swiftSettings: swiftSettings),

        .target(
            name: "PalmSensDriver", dependencies: ["OperandoCore"], path: "Drivers/PalmSens/Driver",
            swiftSettings: swiftSettings),
        .target(
            name: "PalmSensSimulator", dependencies: ["OperandoCore", "OperandoVirtualCell"],
            path: "Drivers/PalmSens/Simulator", swiftSettings: swiftSettings),
        .target(
            name: "NanonisDriver", dependencies: ["OperandoCore"], path: "Drivers/Nanonis/Driver",
            swiftSettings: swiftSettings),
        .target(
            name: "NanonisSimulator", dependencies: ["OperandoCore", "OperandoVirtualCell"],
            path: "Drivers/Nanonis/Simulator", swiftSettings: swiftSettings),

        .target(
            name: "AmptekDriver", dependencies: ["OperandoCore"], path: "Drivers/Amptek/Driver",
            swiftSettings: swiftSettings),
        .target(
            name: "AmptekSimulator", dependencies: ["OperandoCore", "OperandoVirtualCell"],
            path: "Drivers/Amptek/Simulator", swiftSettings: swiftSettings),

        .target(
            name: "OperandoDaemon",
            dependencies: [
                "OperandoCore", "OperandoBuffers", "OperandoIO", "OperandoStore", "OperandoControl", "OperandoSync", "OperandoTimeline",
                "OperandoVirtualCell", "DemoDriver", "DemoSimulator", "ZaberDriver", "ZaberSimulator", "NanonisDriver", "NanonisSimulator", "PalmSensDriver", "PalmSensSimulator", "AmptekDriver", "AmptekSimulator",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            swiftSettings: swiftSettings),

        // Executables: wiring only.
        .executableTarget(
            name: "operandod",
            dependencies: [
                "OperandoDaemon", "OperandoStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),
        .executableTarget(
            name: "operandoctl",
            dependencies: [
                "OperandoControl", "OperandoIO", "OperandoStore", "OperandoTimeline",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            swiftSettings: swiftSettings),
        .executableTarget(
            name: "operando-sim",
            dependencies: [
                "OperandoCore", "OperandoDaemon", "OperandoIO", "OperandoVirtualCell",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),
        .executableTarget(
            name: "operando-bench",
            dependencies: [
                "OperandoCore", "OperandoBuffers", "OperandoIO", "OperandoStore", "OperandoSync", "OperandoTimeline", "PalmSensDriver", "AmptekDriver", "AmptekSimulator", "OperandoVirtualCell",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),

        .testTarget(name: "OperandoBuffersTests", dependencies: ["OperandoBuffers"]),
        .testTarget(name: "OperandoStoreTests", dependencies: ["OperandoStore", "OperandoIO", "OperandoBuffers"]),
        .testTarget(name: "OperandoControlTests", dependencies: ["OperandoControl"]),
        .testTarget(name: "OperandoSyncTests", dependencies: ["OperandoSync"]),
        .testTarget(name: "OperandoTimelineTests", dependencies: ["OperandoTimeline", "OperandoStore", "OperandoSync", "OperandoIO"]),
        .testTarget(name: "DemoInstrumentTests", dependencies: ["DemoDriver", "DemoSimulator", "OperandoIO", "OperandoBuffers"]),
        .testTarget(name: "OperandoDaemonTests", dependencies: ["OperandoDaemon"]),
        .testTarget(name: "ZaberTests", dependencies: ["ZaberDriver", "ZaberSimulator", "OperandoIO"]),
        .testTarget(
            name: "PalmSensTests", dependencies: ["PalmSensDriver", "PalmSensSimulator", "OperandoIO", "OperandoVirtualCell", "OperandoTestSupport"],
            exclude: ["Fixtures"]),
        .testTarget(name: "NanonisTests", dependencies: ["NanonisDriver", "NanonisSimulator", "OperandoIO", "OperandoVirtualCell", "OperandoTestSupport"]),
        .testTarget(
            name: "AmptekTests", dependencies: ["AmptekDriver", "AmptekSimulator", "OperandoIO", "OperandoVirtualCell", "OperandoTestSupport"]),
        .testTarget(
            name: "HardwareTests",
            dependencies: ["OperandoStore", "OperandoControl", "OperandoIO", "OperandoTestSupport", "OperandoTimeline"]),
        .target(
            name: "OperandoTestSupport", dependencies: ["OperandoCore", "OperandoStore", "OperandoControl", "OperandoIO"],
            path: "Tests/OperandoTestSupport"),
        .testTarget(name: "IntegrationTests", dependencies: ["OperandoStore", "OperandoControl", "OperandoIO", "OperandoTimeline", "OperandoTestSupport"]),
    ]
)
