"""The trainer's learning-rate schedule: a step decay over epochs."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="cgh_tf_trainers")
class EpochStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`initial × factor ** (number of decay_epochs <= epoch)` (0-based; `()`: constant), the
    epoch a variable set at every epoch start, whatever a wrapper optimizer counts as steps."""

    def __init__(self, initial_learning_rate, decay_epochs=(), decay_factor=0.1):
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_epochs = tuple(int(e) for e in decay_epochs)
        self.decay_factor = float(decay_factor)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="schedule_epoch")

    def set_epoch(self, epoch: int) -> None:
        """Set the current (0-based) epoch."""
        self.epoch.assign(int(epoch))

    def value_at(self, epoch: int) -> float:
        """The learning rate of (0-based) `epoch`, in Python."""
        passed = sum(1 for e in self.decay_epochs if e <= epoch)
        return self.initial_learning_rate * self.decay_factor ** passed

    def __call__(self, step):
        del step  # the rate depends on the epoch only
        boundaries = tf.constant(self.decay_epochs, dtype=tf.int64)
        passed = tf.reduce_sum(tf.cast(boundaries <= self.epoch, tf.float32))
        return self.initial_learning_rate * tf.pow(self.decay_factor, passed)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_epochs": self.decay_epochs, "decay_factor": self.decay_factor}


def build_schedule(config) -> EpochStepDecay:
    """The learning-rate schedule of the config ("constant" or "step")."""
    step = config.lr_schedule.name == "step"
    decay_epochs = tuple(config.lr_schedule.decay_epochs) if step else ()
    return EpochStepDecay(config.optimizer.learning_rate, decay_epochs,
                          config.lr_schedule.decay_factor)
