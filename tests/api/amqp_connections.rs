//! The gateway's AMQP connections: publish and consume apart, copies that must fit a frame.
